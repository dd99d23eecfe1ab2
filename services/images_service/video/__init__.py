"""Video: frames to MP4/WebM/GIF and a WebP poster (`encode`), and diffusers' video pipelines loaded
from a folder and rendered to frames (`pipelines`). Not yet wired into the API, queue or worker."""
