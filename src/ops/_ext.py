"""Lazy JIT build of the C++ / CUDA extensions (torch.utils.cpp_extension.load + ninja), once per process.

Nothing is compiled at import. The first call that needs an extension builds it (about 20 s for a C++ one here,
about 80 s for a CUDA one) into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions/<py>_<cu>/), where later
processes find it already built. The extensions register plain torch operators (TORCH_LIBRARY, no pybind11),
which keeps the compile short: they are reached as torch.ops.<name>.<op>.
A failed build is remembered with its error text and never retried in the same process.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"

# extension name (= TORCH_LIBRARY namespace) -> sources in csrc/
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "pdfgc_upfirdn2d": ("upfirdn2d_cpu.cpp",),
    "pdfgc_fused_act": ("fused_act_cpu.cpp",),
    "pdfgc_inference": ("inference_cpu.cpp",),
    "pdfgc_upfirdn2d_cuda": ("upfirdn2d_cuda.cu",),
    "pdfgc_fused_act_cuda": ("fused_act_cuda.cu",),
}

_lock = threading.Lock()
_loaded: dict[str, object] = {}
_errors: dict[str, str] = {}


class ExtensionBuildError(RuntimeError):
    """Raised when an extension cannot be compiled or loaded; the message carries the compiler's complaint."""


def build_flags(name: str) -> dict:
    """Compiler/linker flags for extension `name` (also used by the compile-only CUDA test)."""
    if name.endswith("_cuda"):
        return {
            "extra_cflags": ["-O3"],
            "extra_cuda_cflags": ["-O3", "--use_fast_math"],
        }
    # -fopenmp makes at::parallel_for use OpenMP threads; at run time the loader reuses the libgomp.so.1 that
    # torch already loaded, so torch.set_num_threads() governs our kernels too.
    return {"extra_cflags": ["-O3", "-fopenmp"], "extra_ldflags": ["-fopenmp"]}


def _cpp_extension(quiet: bool = True):
    """torch.utils.cpp_extension, imported on demand (heavy: setuptools). Its import-time "No CUDA runtime is
    found" notice is noise except when building CUDA code, so `quiet` silences it for that one import."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    if quiet:
        log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def _build(name: str) -> object:
    cpp_extension = _cpp_extension(quiet=not name.endswith("_cuda"))

    sources = [str(CSRC / s) for s in EXTENSIONS[name]]
    missing = [s for s in sources if not os.path.isfile(s)]
    if missing:
        raise ExtensionBuildError(f"{name}: source files missing: {missing} (reinstall pdfgc: they are package data)")
    cpp_extension.load(
        name=name,
        sources=sources,
        is_python_module=False,  # the library registers torch.ops.<name>.*
        verbose=os.environ.get("PDFGC_OPS_VERBOSE", "0") == "1",
        **build_flags(name),
    )
    return getattr(torch.ops, name)


def get(name: str):
    """Return torch.ops.<name> for a built (or freshly built) extension, or raise ExtensionBuildError."""
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        raise ExtensionBuildError(_errors[name])
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _errors:
            raise ExtensionBuildError(_errors[name])
        try:
            ops = _build(name)
        except Exception as exc:  # compiler missing, compile error, load error: all reported the same way
            text = str(exc).strip()
            if len(text) > 4000:  # keep the end: that is where compilers put the error
                text = "..." + text[-4000:]
            _errors[name] = (
                f"building extension {name!r} from {CSRC} failed ({type(exc).__name__}): {text}. "
                "Set PDFGC_OPS_VERBOSE=1 to see the compiler output; PDFGC_OPS_IMPL=ref avoids the build."
            )
            raise ExtensionBuildError(_errors[name]) from exc
        _loaded[name] = ops
        return ops


def status() -> dict:
    """{'built': [names], 'errors': {name: message}} for this process."""
    return {"built": sorted(_loaded), "errors": dict(_errors)}


def extensions_dir() -> str:
    """Root under which torch keeps the built extensions (TORCH_EXTENSIONS_DIR or torch's default cache)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return root
    return _cpp_extension().get_default_build_root()
