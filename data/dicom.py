"""Read DICOM radiographs as 8-bit grayscale pixels, and their Patient ID.

The display pipeline follows DICOM PS3.3 C.11: stored values -> modality LUT or
rescale -> VOI LUT or window -> 8 bits, with MONOCHROME1 inverted so bone is
always bright. Multi-frame files give their first frame; colour files are
converted to grey with ITU-R 601 luma weights.

Transfer syntaxes this environment decodes (pydicom 3 with Pillow, no extra packages):
uncompressed (implicit/explicit little endian, explicit big endian, deflated),
RLE Lossless (pydicom itself), JPEG Baseline 8-bit and JPEG Extended (8-bit
samples) and JPEG 2000 (lossless and lossy) through Pillow. JPEG Lossless,
JPEG-LS and HTJ2K need ``pylibjpeg`` plugins (or ``gdcm``/``pyjpegls``); such a
file fails with a reason that names the package to install.
"""

from pathlib import Path

import numpy as np

from cxr_tuner.data.errors import DecodeFailure

_RGB_TO_GREY = np.array([0.299, 0.587, 0.114])
# Inputs far outside any window, to read back the output range a window maps to.
_WINDOW_PROBE = np.array([-1e12, 1e12])


def read_dicom(path) -> tuple[np.ndarray, str | None]:
    """Decodes a DICOM file to display-ready 8-bit grayscale pixels.

    Args:
        path: A DICOM file (Part 10, with the ``DICM`` preamble).

    Returns:
        ``(pixels, patient_id)``: a 2-D uint8 array (first frame of a multi-frame
        file) and the header's Patient ID, or None when it is empty or missing.

    Raises:
        data.errors.DecodeFailure: Not DICOM, no pixel data, a transfer syntax no
            installed decoder handles, or pixel data that does not decode.
    """

    dataset = _read_dataset(path, stop_before_pixels=False)
    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DecodeFailure("DICOM without pixel data")
    _check_decoder(dataset)
    try:
        frame = _first_frame(dataset)
        pixels = _colour_to_grey(frame) if frame.ndim == 3 else _grey_to_display(frame, dataset)
    except Exception as error:  # decoders raise many types for damaged pixel data
        raise DecodeFailure(f"DICOM pixel data does not decode: {error}") from error
    return pixels, _patient_id(dataset)


def dicom_patient_id(path) -> str | None:
    """Reads the Patient ID from a DICOM header without decoding any pixels.

    Args:
        path: A DICOM file.

    Returns:
        The Patient ID with surrounding spaces removed, or None when empty or missing.

    Raises:
        data.errors.DecodeFailure: The file is not DICOM.
    """
    return _patient_id(_read_dataset(path, stop_before_pixels=True))


def _read_dataset(path, stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError


    try:
        return pydicom.dcmread(Path(path), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as error:
        raise DecodeFailure("not a DICOM file (no DICM preamble)") from error
    except (OSError, ValueError, EOFError) as error:
        raise DecodeFailure(f"unreadable DICOM header: {error}") from error


def _check_decoder(dataset) -> None:
    """Fails early, naming the package to install, when no decoder handles the syntax."""
    from pydicom.pixels import get_decoder


    file_meta = getattr(dataset, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None:
        return  # pydicom guesses implicit little endian; let decoding decide
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise DecodeFailure(f"unsupported transfer syntax {syntax}") from error
    if not decoder.is_available:
        raise DecodeFailure(f"unsupported transfer syntax {syntax} ({_install_hint(decoder)})")


def _install_hint(decoder) -> str:
    """pydicom's own note on what is missing, preferring the pylibjpeg route (pip-only)."""
    notes = list(decoder.missing_dependencies)
    preferred = [note for note in notes if note.startswith("pylibjpeg")] + notes
    chosen = preferred[0] if preferred else ""
    return "install " + chosen.split(" - requires ", 1)[-1] if chosen else "no decoder known"


def _first_frame(dataset) -> np.ndarray:
    from pydicom.pixels import pixel_array

    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    # Decoding only frame 0 keeps a long cine loop from filling memory.
    return pixel_array(dataset, index=0) if frames > 1 else dataset.pixel_array


def _colour_to_grey(rgb: np.ndarray) -> np.ndarray:
    """pydicom already converts YBR to RGB; colour DICOMs carry no VOI windowing."""
    scale = 255.0 / (2 ** _bits_of(rgb) - 1)
    return np.clip(np.round(rgb[..., :3] @ _RGB_TO_GREY * scale), 0, 255).astype(np.uint8)


def _bits_of(array: np.ndarray) -> int:
    return 8 if array.dtype.itemsize == 1 else 16


def _grey_to_display(stored: np.ndarray, dataset) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(stored, dataset)
    low, high = _display_range(values, dataset)
    if _has_voi(dataset):
        values = apply_voi_lut(values, dataset, index=0, prefer_lut=True)
    unit = (np.asarray(values, dtype=np.float64) - low) / (high - low if high != low else 1.0)
    if dataset.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1 stores bone dark; display it bright like every other file
    return np.round(np.clip(unit, 0.0, 1.0) * 255).astype(np.uint8)


def _has_voi(dataset) -> bool:
    return "VOILUTSequence" in dataset or ("WindowCenter" in dataset and "WindowWidth" in dataset)


def _display_range(values: np.ndarray, dataset) -> tuple[float, float]:
    """The value range that maps to black..white after the VOI step."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in dataset:
        # Run every input the table covers through pydicom, which knows how LUT data
        # is packed; real tables often use fewer bits than their descriptor declares.
        entries, first_input, _bits = dataset.VOILUTSequence[0].LUTDescriptor
        inputs = np.arange(first_input, first_input + (entries or 65536))
        table = apply_voi_lut(inputs, dataset, index=0, prefer_lut=True)
        return float(table.min()), float(table.max())
    if _has_voi(dataset):
        # pydicom maps a window onto a range that depends on bit depth and rescale;
        # values far outside the window land on its two ends.
        low, high = apply_voi_lut(_WINDOW_PROBE, dataset, index=0)
        return float(low), float(high)
    if int(dataset.get("BitsStored", 8)) <= 8 and "RescaleSlope" not in dataset:
        return 0.0, 255.0  # plain 8-bit data is already display-ready
    # No window given for deeper data: stretch what the detector recorded.
    return float(values.min()), float(values.max())


def _patient_id(dataset) -> str | None:
    patient = str(dataset.get("PatientID", "") or "").strip()
    return patient or None
