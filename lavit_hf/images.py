"""Images as the processors expect them: 8-bit RGB, whatever the file's bit depth or transparency.

PIL's `convert("RGB")` clips the single-channel high bit-depth modes instead of scaling them: a 16-bit greyscale PNG
(mode `I;16`) comes out almost all white, because every value above 255 becomes 255. `to_rgb` scales those modes to
8 bits first, and composites transparent images onto white, as transformers' image processors do with an RGBA input.
Extraction, training and evaluation all call it, so the teacher and the student see the same pixels.
"""

import numpy as np
from PIL import Image


# Single-channel modes whose values do not fit in 8 bits: PIL's own conversions clip them.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
UINT16_MAX = 65535


def _to_8bit(image: Image.Image) -> Image.Image:
    """A high bit-depth single-channel image as an 8-bit `L` image, scaled (not clipped)."""
    values = np.asarray(image)
    if image.mode in SIXTEEN_BIT_MODES:
        scale = UINT16_MAX
    elif image.mode == "I":
        # 32-bit container; 16-bit PNGs and TIFFs open in it. Any wider range has no known white point.
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > UINT16_MAX:
            raise ValueError(f"a mode 'I' image with values in [{low}, {high}]: only 16-bit data (0-65535) is known.")
        scale = UINT16_MAX
    else:  # "F"
        low, high = float(values.min()), float(values.max())
        if not (np.isfinite(low) and np.isfinite(high) and 0.0 <= low and high <= 1.0):
            raise ValueError(f"a floating-point image with values in [{low}, {high}]: only [0, 1] is known.")
        scale = 1.0
    scaled = np.rint(values.astype(np.float64) * (255.0 / scale)).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB: high bit-depth greyscale scaled to 8 bits, transparency composited onto white.

    Args:
        image (`PIL.Image.Image`): any mode PIL opens.

    Returns:
        `PIL.Image.Image`: mode `RGB` (the input itself when it already is).

    Raises:
        `ValueError`: for a 32-bit integer or floating-point image whose values have no known range.

    Example:

    ```python
    >>> import numpy as np
    >>> from PIL import Image
    >>> grey16 = Image.fromarray(np.full((2, 2), 32896, dtype=np.uint16))  # mid-grey at 16 bits
    >>> grey16.mode, grey16.convert("RGB").getpixel((0, 0)), to_rgb(grey16).getpixel((0, 0))
    ('I;16', (255, 255, 255), (128, 128, 128))

    ```
    """
    if image.mode == "RGB":
        return image
    if image.mode in (*SIXTEEN_BIT_MODES, "I", "F"):
        return _to_8bit(image).convert("RGB")
    if "A" in image.getbands() or "a" in image.getbands() or image.info.get("transparency") is not None:
        # Premultiplied modes (La, RGBa) convert to RGBA only through their straight-alpha form.
        if image.mode == "La":
            image = image.convert("LA")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


__all__ = ["to_rgb"]
