"""The feddf cache format, version 1 — constants shared by every writer and reader.

    python -c "import feddf.cache.format as f; print(f.FORMAT_NAME, f.FORMAT_VERSION)"

`docs/cache-format.md` is the human-readable contract; keep the two in step.

Layout of one cache file (HDF5 with library-version bounds LIBVER = v110: the lowest with SWMR, so SWMR readers can
follow a writer and every HDF5 >= 1.10 reader opens it; older caches were written with libver='latest' and still open):

    /images      uint8 (N, C, R, R)  chunks of whole images (k, C, R, R), fletcher32, deflate ("gzip", gen's
                                     default), none (import's default) or lzf (h5py-only, on request)
    /labels      int64 (N,)          conditioning class (ImageNet id for BigGAN, dataset label for imports), -1 = none
    /targets     int64 (N,)          optional: target-task class from a class map (e.g. cifar10), -1 = unmapped
    /labeler_pred int64 (N,)         optional (--labeler): the labeler classifier's predicted class per image
    /labeler_conf float32 (N,)       optional (--labeler): its max-softmax confidence per image
    /committed   int64 ()            number of leading images that are complete; readers must not look past it
    /coverage/label_counts   int64 (L,)  exact counts of labels 0..L-1 among the committed images
    /coverage/target_counts  int64 (T,)  exact counts of targets 0..T-1 (only when /targets exists)
    /coverage/labeler_counts int64 (T,)  predicted-class histogram of a labeler classifier (only with --labeler)
    /coverage/labeler_conf_sum float64 (T,) sum of the labeler's max-softmax confidence per predicted class

N is the requested size (datasets are allocated up front; chunks are only written as blocks commit). A block commit
writes images/labels/targets/coverage, flushes, and only then advances /committed and flushes again, so a reader (or a
resume after kill -9) never trusts an image that was not fully written. Per-image arrays share the images' chunking
(k images per chunk, fletcher32; with deflate also byte shuffle). Chunks are encoded by feddf itself (feddf.cache.codec,
byte for byte HDF5's filters) and stored with write_direct_chunk; a chunk that deflate cannot shrink is stored raw with
the deflate (and shuffle) bits set in its filter mask, which every HDF5 reader honours. Readers open with h5py.File(path, "r", swmr=True) (feddf.cache.writer.open_h5_read),
which works during generation, after a killed writer, and on complete caches; call .refresh() on datasets to follow a
live writer. A multi-process (torchrun) cache is a file whose per-image datasets are HDF5 virtual datasets over
shard files `<stem>.shard-<rank>-of-<world>.h5` in the same folder (attribute `shards`); keep them together.

Root attributes (provenance; written at creation, `complete` flipped in place once the last block commits):
    format="feddf-cache", format_version=1, kind="generated"|"imported", generator / source, weights_hash
    ("random" when --random-weights), random_weights (bool), truncation, resolution, channels, seed, classes (spec),
    n_requested, package_version, created (ISO-8601 UTC), config (JSON of the resolved config dataclass),
    versions (JSON), label_names (JSON list, optional), target_names (JSON list, optional), complete (bool),
    identity (JSON: what a resume must match), compression, chunk_images, labeler (optional), shards (optional).
    `truncation` is only written by generators that use it (BigGAN).
"""
FORMAT_NAME = "feddf-cache"
FORMAT_VERSION = 1

IMAGES = "images"
LABELS = "labels"
TARGETS = "targets"
COMMITTED = "committed"
COVERAGE = "coverage"
LABEL_COUNTS = "coverage/label_counts"
TARGET_COUNTS = "coverage/target_counts"
LABELER_COUNTS = "coverage/labeler_counts"
LABELER_CONF_SUM = "coverage/labeler_conf_sum"
LABELER_PRED = "labeler_pred"
LABELER_CONF = "labeler_conf"

UNLABELED = -1

# HDF5 library-version bounds of every file feddf writes: the lowest that SWMR (superblock v3, fixed-array chunk
# index) and virtual datasets need, so HDF5 >= 1.10 readers (h5py linked to a system HDF5, h5dump, HDFView, netCDF)
# open the files. Never 'latest': with HDF5 2.0 that writes object versions HDF5 <= 1.14 cannot read.
LIBVER = ("v110", "v110")


def libver_bounds() -> tuple[int, int]:
    """LIBVER as h5py.h5f constants, for h5py.h5p FILE_ACCESS property lists."""
    import h5py

    return h5py.h5f.LIBVER_V110, h5py.h5f.LIBVER_V110


def chunk_images(channels: int, resolution: int, target_bytes: int = 1 << 20) -> int:
    """Images per chunk: whole images only (h5py's auto-chunking splits one image into ~24 chunks), about 1 MiB."""
    per_image = channels * resolution * resolution
    return max(1, target_bytes // per_image)
