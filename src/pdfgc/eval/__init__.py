"""Evaluation: image/identity/landmark/lip-sync metrics and the synthetic disentanglement benchmark.

- `pdfgc.eval.metrics`: PSNR, SSIM, LPIPS (backbone from a path), LMD / mouth-LMD;
- `pdfgc.eval.identity`: CSIM with the dlib 128-d face embedding (offline) or a TorchScript model from a path;
- `pdfgc.eval.syncnet`: SyncNet-style expert (weights from a path) and LSE-C / LSE-D;
- `pdfgc.eval.estimator`: factor estimator trained on synthetic renders;
- `pdfgc.eval.benchmark.run_synthetic_benchmark`: control accuracy and leakage with baselines;
- `pdfgc.eval.videos.evaluate_videos`: metrics over a folder of generated videos vs references;
- CLI: `python -m pdfgc.eval {videos,synthetic} ...` (see docs/evaluation.md).

Submodules import their heavy dependencies (lpips, dlib, matplotlib, the pipeline) lazily.
"""
