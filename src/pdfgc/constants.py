"""Numbers fixed by the reference PD-FGC system (SPEC 1.4, 1.6-1.8). One home for each; configs interpolate these
through `${pdfgc:...}`-free plain values that tests compare against this module."""

# --- audio / video timing (SPEC 1.4) ---
SAMPLE_RATE = 16_000  # Hz, mono
FPS = 25  # video frames per second
HOP_LENGTH = 160  # samples per mel frame (10 ms)
WIN_LENGTH = 1280  # samples per STFT frame (80 ms) == n_fft
N_FFT = 1280
N_MELS = 80
FMIN = 125.0
FMAX = 7600.0
MEL_PER_FRAME = SAMPLE_RATE // HOP_LENGTH // FPS  # 4 mel frames per video frame
WINDOW_FRAMES = 5  # video frames covered by one audio window
MEL_WINDOW = WINDOW_FRAMES * MEL_PER_FRAME  # 20 mel frames per window
FRAME_OFFSET = 2  # generated frame i uses the window of video frame i + 2 (SPEC 1.4)

# --- image geometry (SPEC 1.3) ---
IMAGE_SIZE = 224
ALIGN_TEMPLATE = ((87.0, 59.0), (137.0, 59.0), (112.0, 120.0))  # eye L, eye R, mouth centre on a 224 canvas
REF_CROP = (0, 192, 16, 208)  # rows [0,192), cols [16,208) then resize back to 224 (SPEC 1.3 step 3)

# --- latent layout (SPEC 1.8) ---
APP_DIM = 2048
LIP_DIM = 500
EMO_DIM = 30
EYE_DIM = 6
POSE_DIM = 6
MOTION_DIM = LIP_DIM + EMO_DIM + EYE_DIM + POSE_DIM  # 542
STYLE_DIM = APP_DIM + MOTION_DIM  # 2590
UNIFIED_MOTION_DIM = 512  # stage-1 motion feature (FAN fc output)

# --- control semantics (SPEC 1.7) ---
GAZE_DIMS = (2, 3)  # eye-code dims kept when blink is off
BLINK_DIMS = (0, 1, 4, 5)  # eye-code dims kept when gaze is off
CONTROLS = ("mouth", "blink", "gaze", "emo", "headpose")
# 68-point landmark backends (pdfgc.data.landmarks.get_backend builds them; infer.py and preprocess accept these)
LANDMARK_BACKENDS = ("dlib", "face_alignment")

# --- post-processing (SPEC 1.6) ---
LIP_SCALE = 1.5
EYE_SCALE = 1.2
EMO_SCALE = 1.2
REFERENCE_BATCH = 8
REFERENCE_SEED = 20202001
