"""pdfgc preprocessing: a folder of talking-face videos (VoxCeleb2 layout or any mp4s) -> aligned training clips.

Run `python -m preprocess --help` from the repository root; see preprocess/README.md and docs/preprocess.md.
Modules: `cli` (arguments), `run` (discovery, sharding, workers, resume, report), `clip` (one clip end to end),
`factors` (pose / eye / mouth estimates from landmarks), `pack` (tar shards), `bench` (throughput figure). The
output format (clip files, manifest, split lists, shards) is owned by `pdfgc.data.clipstore`, which
`pdfgc.data.vox2.Vox2Source` reads with.
"""
