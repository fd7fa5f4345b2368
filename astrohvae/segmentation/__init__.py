"""Network segmentation with hypercolumns and the footprint rules.

`network` (the `NetworkSegmenter` estimator), `seeds` (matched-filter seeds, sky mode),
`footprints` (isophotal growth, fragment merging), `classmap` (per-pixel classes),
`training` (fitting the segmentation networks).

The method
----------
Pixel-wise segmentation of whole fields learned without labels.

After the seed paper's sections 4 and 5.2-5.3: a small fully convolutional
(V)AE (`astrohvae.models.segment`) is trained to reconstruct five-band image
tiles; the *hypercolumns* of chosen layers (per-pixel concatenation of their
feature maps, upsampled to full resolution) are then split into "object" and
"background" by an unsupervised rule, with no labels anywhere:

1. the network input is the field in noise units,
   ``asinh(((data - level) / rms) / STRETCH) * STRETCH`` per band, 0 under
   the mask (`network_input`), so one rule fits every field;
2. the hypercolumns are standardised, projected on their first principal
   components and modelled by a two-component Gaussian mixture (full
   covariances).  The component whose pixels have the *dimmest mean
   reconstruction* is "background", the other "object" (`fit_rule`).  The
   mixture is fitted once at training time and shipped with the weights
   (``rule='shipped'``, the default) or refitted on each field
   (``rule='refit'``);
3. pixels whose posterior probability of "object" exceeds ``threshold``
   (0.5: the Bayes rule) form the detection mask; its connected components
   of at least ``n_pixels`` pixels are the network's sources;
4. sources the network missed are added from a PSF-matched-filter
   detection of the g+r+i image at ``seed_nsigma`` (4) times that image's
   own measured noise (`matched_filter_seeds`);
5. all are deblended with photutils' `deblend_sources` on the
   noise-weighted g+r+i image smoothed by a Gaussian of ``deblend_fwhm``
   pixels, its exponential levels starting at ``deblend_floor`` (3) times
   that image's noise measured on the sky side of its histogram
   (`sky_sigma`; a network segment reaches the noise, and from its minimum
   photutils would space the levels linearly, leaving a bright star's
   fainter neighbours inside its segment), and every child deblended again
   on its own levels until none splits (``deblend_recursive``: a crowded
   field's network segment joins hundreds of stars, too many for one set
   of levels); then every group of segments (connected through matched-filter
   S/N > ``fragment_group``, 3) around an extended source is tested against
   that source's smooth elliptical model (`merge_fragments`): a segment is
   kept only if it stands out above the model by ``fragment_excess`` (5)
   sigma *and* holds ``fragment_flux`` (5 %) of the group's light above
   it or has colours of its own (five-band chi^2 >= ``fragment_colour``,
   30); when ``fragment_knots`` (3) or more such segments of a source,
   each under 10 % of its light, are more than chance would put there,
   those sharing their common colour are its star-forming knots (bluer
   than the disc, so the colour test alone keeps them) and rejoin it;
   the knots, arms and halo bumps of a large galaxy rejoin it, a star
   on it or a galaxy in contact stays apart, and a segment where the
   source's model is below 1 sigma is beyond it and left alone;
6. segments seen in fewer than two bands are dropped: the second-highest
   of the five per-band matched-filter S/Ns at the segment's windowed
   centroid must reach ``band_nsigma`` (2) (`band_support`); this removes
   single-band cosmic rays and noise peaks and keeps very red (i + z) and
   blue (u + g) objects;
7. segments that stand out only on a bright star's halo are dropped
   (`halo_peaks`): around every segment whose matched-filter S/N peaks at
   ``halo_peak`` (2000) or more, the halo is its azimuthal median profile
   over the pixels of no segment, and a fainter segment there is kept only
   if its peak above the halo reaches the floor of the ordinary detections
   (their 2nd-percentile peak).  Real SDSS wings lift the sky by ~5 sigma
   at 40 px from an r = 13.7 star: without this step a ring of ~30 faint
   "galaxies" surrounds each bright star (004510-4-0030: 57 segments
   dropped, none of them an SDSS-catalogued star; the simulator's wings are
   weaker: 1-6 dropped on seeds 10-12, IoU unchanged, purity +0.000-0.004);
8. each segment is grown to its analysis isophote, ``isophote`` (0.5) r sky
   sigma per pixel (`grow_isophotal`): the network's footprints stop near
   1.5-2 sigma per pixel and miss the faint wings, which single noisy
   pixels cannot decide.  Segments with S/N >= ``psf_snr`` (30) grow in
   the ellipse of their second moments, to the radius where their
   azimuthally averaged profile falls to the level or, for point-like ones,
   where the field's stellar profile (measured on its bright stars out to
   30 px) scaled to their core amplitude does; fainter ones, nearly
   unresolved and whose annulus at the isophote has S/N ~ 1, get a footprint
   about their windowed centroid (`windowed_centroids`) out to where the
   field's PSF profile (`psf_profile`) convolved with an exponential disc
   of their windowed size and scaled to their matched-filter amplitude
   falls to the level, drawn as the ellipse of their windowed shape
   (round unless their elongation exceeds its noise) with that circle's
   area; their seed pixels outside that ellipse go unless they stand out
   (`KEEP_LEVEL`).  Sources whose
   isophote lies 30 px (``smooth_radius``) or more out follow the isophote
   of their image smoothed by 0.15 times that radius instead of an ellipse
   (a big galaxy's round bulge and flat disc give an outer isophote of
   another shape than its inner moments).  With ``trim``, a bright source
   of radius 12 px or less, or a point-like one of any radius, gives up the
   faint pixels of its network seed that lie outside its footprint (the
   network's footprints are blurred 1-2 px past the isophote; bright
   pixels there are an undeblended companion's, a spike or a bleed trail;
   bigger resolved sources keep theirs: a big galaxy's outskirts).
   The result is a `photutils.segmentation.SegmentationImage` (0
   background, k = source k).

Whole fields run in overlapping tiles through `dask.array.map_overlap`
(``tile`` pixels per block plus ``overlap`` pixels on each side, at least the
network's receptive radius, so there are no seams); the tiles of a field are
run through the network in batches of ``batch_size``.

Measured (``benchmarks/results/segment/README.md``): with this rule only the
AE with residual connections (``ae-res-hc``, the default) gives clean seeds;
the plain AE and the VAE give blurred hypercolumns whose mixture "object"
component swallows halos and noise (purity 0.2-0.5), as the seed paper
describes qualitatively.  Steps 4-8 (parameters chosen on simulated
seeds 10-12, none of the benchmark's; step 7's set beforehand and checked
on those seeds and one real field) raise ae-res-hc's pixel IoU with the
simulator's 0.5-sigma truth mask from 0.70-0.72 to 0.80-0.82 on those
seeds (0.83 and 0.88 on seeds 14 and 13, added for the trim and smoothing
rules), and its purity from 0.95 to 0.97-0.98.

Public API
----------
`NetworkSegmenter` (fit / object_probability / segment / save / load),
`load_default_segmenter`, `classmap`, `network_input`, `train_segment_net`,
`grow_isophotal`, `matched_filter_seeds`, `matched_filter_sn`, `sky_sigma`, `band_support`,
`halo_peaks`, `psf_profile` (centroids: `astrohvae.detection.windowed_centroids`).
"""

from astrohvae.lazy import lazy_exports

_EXPORTS = {
    'DEFAULT_TAPS': 'astrohvae.segmentation.network',
    'DEFAULT_VARIANT': 'astrohvae.segmentation.network',
    'NetworkSegmenter': 'astrohvae.segmentation.network',
    'STRETCH': 'astrohvae.segmentation.network',
    'WEIGHTS_DIR': 'astrohvae.segmentation.network',
    'band_support': 'astrohvae.segmentation.seeds',
    'classmap': 'astrohvae.segmentation.classmap',
    'grow_isophotal': 'astrohvae.segmentation.footprints',
    'halo_peaks': 'astrohvae.segmentation.seeds',
    'load_default_segmenter': 'astrohvae.segmentation.network',
    'matched_filter_seeds': 'astrohvae.segmentation.seeds',
    'matched_filter_sn': 'astrohvae.segmentation.seeds',
    'merge_fragments': 'astrohvae.segmentation.footprints',
    'network_input': 'astrohvae.segmentation.network',
    'psf_profile': 'astrohvae.segmentation.footprints',
    'sky_sigma': 'astrohvae.segmentation.seeds',
    'train_segment_net': 'astrohvae.segmentation.training',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
