"""Makes docs/img/pasteback.png: the photo | a stand-in generated face (the aligned crop, hue-rotated so the pasted
region shows) | the face pasted back into the whole photo, with the feather (mask 0.05 and 0.95) outlined.

    python benchmarks/make_pasteback_still.py
"""
import numpy as np, cv2, skimage.data
from pdfgc.data import align, landmarks
from pdfgc.pipeline.pasteback import PasteBack
img = skimage.data.astronaut()
lm = landmarks.detect_one(landmarks.get_backend("dlib"), img)
r = align.align_image(img, lm)
x = align.ref_preprocess(r.frames[0])
face = ((x.transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
# a stand-in "generated" face: the crop with its colours turned (hue rotation) so the pasted region is visible
hsv = cv2.cvtColor(face, cv2.COLOR_RGB2HSV); hsv[..., 0] = (hsv[..., 0].astype(int) + 60) % 180
gen = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
pb = PasteBack(224)
out = pb(img, r.matrices[0], gen)
m = pb.covered(img.shape, r.matrices[0])
cont = out.copy()
for lev in (0.05, 0.95):
    cs, _ = cv2.findContours((m > lev).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(cont, cs, -1, (255, 255, 0), 2)
side = 320
panels = [cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA), cv2.resize(gen, (side, side)),
          cv2.resize(cont, (side, side), interpolation=cv2.INTER_AREA)]
strip = np.concatenate(panels, 1)
cv2.imwrite("docs/img/pasteback.png", strip[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
