"""The in-process diffusers engine: loads pipelines by name from models.yaml, keeps them resident in
an LRU, and renders a `RenderSpec` on CUDA, MPS or the CPU: text-to-image, image-to-image and
inpainting (pipelines derived from the resident one, sharing its weights), with LoRAs applied for
one job at a time, guided by ControlNets and an IP-Adapter reference, and with A1111's hires fix.

`validation` says what a spec may ask of a model (pure, no torch); `device` picks device and dtype
and handles memory; `cache` loads pipelines and keeps the LRU (and the add-ons loaded for each);
`lora` puts adapters in and takes them out; `controlnet` loads ControlNets and their pipeline
arguments; `ip_adapter` puts a reference image's adapter in and takes it out; `hires` upscales for
the hires fix; `render` runs the pipelines and reports; `engine` (`DiffusersEngine`) glues them
under one lock. The CUDA speed-ups live in `..acceleration`. Only `validation` may be imported
without torch: this package's own import loads none of the others, so the API process can read it.
"""
