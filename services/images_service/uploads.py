"""Inputs of image-to-image, inpainting and LoRA jobs: checking an uploaded body (a PNG, JPEG or WebP
that really decodes, within the pixel ceiling), storing it under IMAGES_UPLOADS_PREFIX with a key we
make, and resolving a request's `image`, `mask`, `strength` and `loras` at submit time.

Uploads live apart from S3_PREFIX, so they never show in the gallery or its index rebuild.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

from PIL import Image, ImageOps

from services.common.limits import MAX_UPLOAD_BYTES
from services.contracts import GenerateRequest, LoraRef, UploadView
from services.contracts.schema import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE

from .engines.descriptors import engines_with
from .errors import KeyNotFound, UnsupportedMediaType, ValidationFailed
from .models import ModelRegistry
from .refiner import check_refiner_follows
from .settings import Settings
from .storage import Store
from .storage.keys import MAX_KEY_CHARS, new_image_key, validate_image_key

UPLOAD_FORMATS: dict[str, tuple[str, str]] = {
    "image/png": ("PNG", ".png"),
    "image/jpeg": ("JPEG", ".jpg"),
    "image/webp": ("WEBP", ".webp"),
}
"""Accepted Content-Type → (Pillow format name, key extension): HIP-35's PNG/JPEG/WebP only."""

MEDIA_TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
"""Non-standard names some clients send for JPEG."""

UPLOAD_SUFFIXES = tuple(suffix for _, suffix in UPLOAD_FORMATS.values())

EXIF_ORIENTATION = 0x0112
"""The EXIF tag of a camera's rotation; values 5 to 8 turn the picture a quarter."""

MAX_UPLOAD_SIDE = 4096
"""Largest width or height accepted (HIP-35's enterprise ceiling): 4096×4096 decodes to 48 MB of RGB,
while a decompression bomb of a few KB can claim 100,000² pixels; refused before decoding."""

INPUT_CAPABILITIES: dict[str, str] = {
    "image": "img2img",
    "mask": "inpaint",
    "loras": "lora",
    "controls": "control",
    "reference_image": "reference",
    "hires": "hires",
}
"""Each input field of a request → the engine capability (`Capabilities`) that takes it."""

DEFAULT_STRENGTH = 0.75
"""`strength` of an image-to-image request that sends none: A1111's and diffusers' usual default."""

HOW_TO_UPLOAD = (
    "POST the image file itself as the body with Content-Type image/png, image/jpeg or image/webp, "
    "e.g. curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' …/api/images/uploads"
)


@dataclass(frozen=True)
class CheckedImage:
    width: int
    height: int
    content_type: str
    suffix: str


def media_type_of(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    return MEDIA_TYPE_ALIASES.get(media, media)


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """The size as the picture is seen: a phone photo stored sideways with an EXIF rotation counts
    upright, as `read_image` hands it to the engine."""
    width, height = image.size
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the pixels still count, as stored
        return width, height
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def upload_format(content_type: str) -> tuple[str, str, str]:
    """(media type, Pillow format, key suffix) of an accepted Content-Type; 415 for any other."""
    media = media_type_of(content_type)
    if media not in UPLOAD_FORMATS:
        raise UnsupportedMediaType(
            f"uploads are PNG, JPEG or WebP; Content-Type was '{content_type[:100] or 'absent'}'",
            remediation=[HOW_TO_UPLOAD],
        )
    return (media, *UPLOAD_FORMATS[media])


def check_upload(data: bytes, content_type: str) -> CheckedImage:
    """Accept `data` only when it is a whole image of the declared type within the limits.

    Raises `UnsupportedMediaType` (415) for a Content-Type we do not take and `ValidationFailed` (400)
    for a body that is empty, too large, of another format, too many pixels, or does not decode.
    """
    media, expected, suffix = upload_format(content_type)
    if not data:
        raise ValidationFailed("the upload is empty", remediation=[HOW_TO_UPLOAD])
    if len(data) > MAX_UPLOAD_BYTES:  # the body limit refuses it first; kept for direct callers
        raise ValidationFailed("the upload is larger than 20 MB", remediation=["Upload a smaller image."])

    def refuse(problem: str, *hints: str) -> ValidationFailed:
        return ValidationFailed(
            f"the upload is not a usable {expected} image: {problem}",
            remediation=[*hints, HOW_TO_UPLOAD],
            detail={"content_type": media, "size": len(data)},
        )

    try:
        # `formats` limits Pillow to the declared decoder: a GIF or a PSD labelled image/png is refused.
        with Image.open(io.BytesIO(data), formats=[expected]) as probe:
            # The header only: a bomb is refused before a pixel is decoded.
            if max(probe.size) > MAX_UPLOAD_SIDE:
                raise refuse(
                    f"{probe.width}x{probe.height} pixels is more than {MAX_UPLOAD_SIDE}x{MAX_UPLOAD_SIDE}",
                    f"Scale it down to at most {MAX_UPLOAD_SIDE} pixels a side.",
                )
            probe.verify()  # must come first after open: checksums (PNG) and structure
        # verify() leaves the image unusable, and checks little for JPEG/WebP: decode it for real.
        with Image.open(io.BytesIO(data), formats=[expected]) as image:
            image.load()
            width, height = oriented_size(image)
    except ValidationFailed:
        raise
    except Image.UnidentifiedImageError as exc:
        # Pillow's own message names an in-memory object by address: nothing a caller can use.
        raise refuse(
            f"the body is not {expected} data", "Send the Content-Type that matches the file."
        ) from exc
    except Exception as exc:  # Pillow's decoders raise a zoo of types on damaged or hostile input
        raise refuse(
            f"it does not decode ({type(exc).__name__}: {exc})", "Re-save the image and upload it again."
        ) from exc
    return CheckedImage(width, height, media, suffix)


def store_upload(
    store: Store, settings: Settings, data: bytes, content_type: str, now: datetime | None = None
) -> UploadView:
    """Check `data`, store it as ``{IMAGES_UPLOADS_PREFIX}{YYYYmmdd_HHMMSS}_{8 hex}.{png|jpg|webp}``."""
    checked = check_upload(data, content_type)
    key = new_image_key(settings.uploads_prefix, now) + checked.suffix
    store.put(key, data, checked.content_type)
    return UploadView(
        key=key, width=checked.width, height=checked.height, content_type=checked.content_type, size=len(data)
    )


def validate_upload_key(key: str, prefix: str) -> str:
    """`key` when it names an upload under `prefix`; `ValidationFailed` otherwise."""
    return validate_image_key(
        key,
        prefix,
        suffixes=UPLOAD_SUFFIXES,
        listing="Use the `key` that POST /api/images/uploads answered with.",
    )


def check_input_key(key: str, settings: Settings, *, field: str, allow_gallery: bool) -> str:
    """Validate a request's `image`/`mask` key: an upload, or (when `allow_gallery`) a stored PNG
    under S3_PREFIX. Only the shape is checked here; `require_stored` checks that it exists."""
    if key.startswith(settings.uploads_prefix):
        return validate_upload_key(key, settings.uploads_prefix)
    if allow_gallery and key.startswith(settings.s3_prefix):
        return validate_image_key(key, settings.s3_prefix)
    where = f"'{settings.uploads_prefix}' (uploads)" + (
        f" or '{settings.s3_prefix}' (generated images)" if allow_gallery else ""
    )
    raise ValidationFailed(
        f"`{field}` must be the key of an image under {where}, not {key[:200]!r}",
        remediation=[
            "Upload the picture first: POST /api/images/uploads, then send the `key` it answers with.",
            *(["Or use a `key` from GET /api/images/latest."] if allow_gallery else []),
        ],
        detail={"field": field, "key": key[:MAX_KEY_CHARS]},
    )


def missing_input(key: str, field: str) -> KeyNotFound:
    return KeyNotFound(
        f"`{field}`: no stored image with key '{key}'",
        remediation=[
            "Upload it again (POST /api/images/uploads) and use the key it answers with,",
            "or pick a generated image from GET /api/images/latest.",
        ],
        detail={"field": field, "key": key},
    )


def require_stored(store: Store, key: str, *, field: str) -> None:
    if store.head(key) is None:
        raise missing_input(key, field)


def read_image(store: Store, key: str) -> Image.Image:
    """The decoded image stored at `key`, turned upright by its EXIF rotation (the engine's image
    loader); `KeyNotFound` when it is gone."""
    data = store.get(key)
    try:
        with Image.open(io.BytesIO(data), formats=[name for name, _ in UPLOAD_FORMATS.values()]) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except Exception as exc:  # stored by us after a check, so only a damaged object lands here
        raise ValidationFailed(f"the stored image '{key}' does not decode: {type(exc).__name__}") from exc


@dataclass(frozen=True)
class ResolvedInputs:
    """What a request's image fields resolve to; `width`/`height` None: the model's default."""

    image: str | None
    mask: str | None
    strength: float | None
    loras: list[LoraRef]
    width: int | None
    height: int | None


def resolve_inputs(
    request: GenerateRequest, engine: str, registry: ModelRegistry, settings: Settings, store: Store | None
) -> ResolvedInputs:
    """Check `image`, `mask` and `loras` for `engine` and fix `strength` and the output size.

    An image-to-image job without width/height renders at the input's size (see `size_for_input`).
    With a `store`, the keys must exist (404 otherwise); without one only their shape is checked.
    """
    _check_engine_takes_inputs(request, engine)
    loras = _check_loras(request.loras, registry)
    width, height = request.width, request.height
    if request.image is None:
        return ResolvedInputs(None, None, None, loras, width, height)
    check_input_key(request.image, settings, field="image", allow_gallery=True)
    if request.mask is not None:
        check_input_key(request.mask, settings, field="mask", allow_gallery=False)
    strength = request.strength if request.strength is not None else DEFAULT_STRENGTH
    if store is not None:
        width, height = size_for_input(width, height, _stored_size(store, request.image))
        if request.mask is not None:
            require_stored(store, request.mask, field="mask")
    return ResolvedInputs(request.image, request.mask, strength, loras, width, height)


def _check_engine_takes_inputs(request: GenerateRequest, engine: str) -> None:
    used = [name for name in INPUT_CAPABILITIES if getattr(request, name)]
    refused = [name for name in used if engine not in engines_with(INPUT_CAPABILITIES[name])]
    if refused:
        fields = ", ".join(f"`{name}`" for name in refused)
        takers = sorted(set.intersection(*(set(engines_with(INPUT_CAPABILITIES[name])) for name in refused)))
        pronoun = "it" if len(refused) == 1 else "them"
        raise ValidationFailed(
            f"{fields}: engine '{engine}' does not take {pronoun}; "
            + (
                f"engines that do: {', '.join(takers)}"
                if takers
                else f"no engine of this build takes {pronoun}"
            ),
            remediation=[f'Send "engine": "{takers[0]}", or drop {fields}.' if takers else f"Drop {fields}."],
            detail={"engine": engine, "fields": refused},
        )
    if request.image is not None and request.workflow is not None:
        raise ValidationFailed(
            "`image` and `workflow` do not go together: `image` starts the built-in template from a "
            "picture, while a raw workflow is sent as is and loads its own",
            remediation=["Drop `workflow` to use `image`, or load the picture in the workflow (LoadImage)."],
        )
    if request.refiner:
        check_refiner_follows(is_text_to_image=request.image is None)


def _check_loras(loras: list[LoraRef], registry: ModelRegistry) -> list[LoraRef]:
    names = [lora.name for lora in loras]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValidationFailed(
            f"LoRA {', '.join(repeated)} is listed more than once",
            remediation=["List each LoRA once, with the weight you want."],
        )
    for name in names:
        registry.lora(name)  # ModelNotFound, saying how to register one
    return list(loras)


def _fit_side(value: float) -> int:
    """A side the wire accepts: rounded down to a multiple of 8, within 64..4096."""
    return min(MAX_SIDE, max(MIN_SIDE, int(value) // SIDE_MULTIPLE * SIDE_MULTIPLE))


def size_for_input(width: int | None, height: int | None, input_size: tuple[int, int]) -> tuple[int, int]:
    """Output size of an image-to-image job: the sides the request gives; a missing one follows the
    input (both missing: its size; one missing: its aspect ratio), rounded down to a multiple of 8
    and kept within 64..4096."""
    in_width, in_height = input_size
    if width is None and height is None:
        return _fit_side(in_width), _fit_side(in_height)
    if width is None:
        assert height is not None
        return _fit_side(height * in_width / in_height), height
    if height is None:
        return width, _fit_side(width * in_height / in_width)
    return width, height


def _stored_size(store: Store, key: str) -> tuple[int, int]:
    try:
        data = store.get(key)
    except KeyNotFound as exc:
        raise missing_input(key, "image") from exc
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            return oriented_size(image)
    except Exception as exc:  # uploads are checked when stored; only a damaged object lands here
        raise ValidationFailed(f"`image`: the stored object '{key}' is not an image") from exc
