"""Video: frames to MP4/WebM/GIF and a WebP poster (`encode`), diffusers' video pipelines loaded from
a folder and rendered to frames (`pipelines`), the families a request may name (`families`, torch-free),
admitting a video request (`requests`, torch-free) and storing a rendered clip (`storing`)."""
