import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from cxr_tuner.data.dicom import dicom_patient_id, read_dicom
from cxr_tuner.data.errors import DecodeFailure
from cxr_tuner.data.images import decode_image


def _dataset(pixels=None, photometric="MONOCHROME2", patient_id="PAT-7", **header):
    """A minimal DX file; pixels is a (rows, cols[, 3]) or (frames, rows, cols) array."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "DX"
    if pixels is not None:
        _set_pixels(ds, np.asarray(pixels), photometric)
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    return ds


def _set_pixels(ds, pixels, photometric):
    colour = photometric == "RGB"
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    if pixels.ndim == (4 if colour else 3):
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def _save(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def gradient():
    return np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))


def test_monochrome2_8bit_pixels_and_patient_id(tmp_path, gradient):
    pixels, patient = read_dicom(_save(_dataset(gradient), tmp_path / "a.dcm"))
    assert pixels.dtype == np.uint8 and pixels.shape == gradient.shape
    assert np.array_equal(pixels, gradient)
    assert patient == "PAT-7"


def test_monochrome1_is_inverted(tmp_path, gradient):
    normal, _ = read_dicom(_save(_dataset(gradient), tmp_path / "m2.dcm"))
    inverted, _ = read_dicom(_save(_dataset(gradient, "MONOCHROME1"), tmp_path / "m1.dcm"))
    assert np.array_equal(inverted.astype(int), 255 - normal.astype(int))


def test_16bit_window_maps_center_to_mid_grey_and_clips_outside(tmp_path):
    stored = np.array([[0, 1000, 1500, 2000, 2500, 3000, 4000]], dtype=np.uint16)
    ds = _dataset(stored, WindowCenter=2000, WindowWidth=2000)
    pixels, _ = read_dicom(_save(ds, tmp_path / "w.dcm"))
    assert pixels[0, 0] == 0 and pixels[0, 1] <= 1
    assert pixels[0, -1] == 255 and pixels[0, -2] >= 254
    assert abs(int(pixels[0, 3]) - 128) <= 1
    assert pixels[0, 2] < pixels[0, 3] < pixels[0, 4]


def test_window_is_applied_after_rescale(tmp_path):
    # CT-like storage: value = stored - 1024; the window is given in rescaled units.
    stored = np.array([[0, 1024, 2048]], dtype=np.uint16)
    ds = _dataset(stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=400)
    pixels, _ = read_dicom(_save(ds, tmp_path / "r.dcm"))
    assert pixels[0, 0] == 0 and abs(int(pixels[0, 1]) - 128) <= 1 and pixels[0, 2] == 255


def test_16bit_without_window_uses_the_full_recorded_range(tmp_path):
    stored = np.array([[100, 600, 1100]], dtype=np.uint16)
    pixels, _ = read_dicom(_save(_dataset(stored), tmp_path / "n.dcm"))
    assert pixels.tolist() == [[0, 128, 255]]


def test_multi_frame_gives_the_first_frame(tmp_path, gradient):
    frames = np.stack([gradient, 255 - gradient, gradient // 2])
    pixels, _ = read_dicom(_save(_dataset(frames), tmp_path / "mf.dcm"))
    assert np.array_equal(pixels, gradient)


def test_rgb_is_converted_to_grey(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:2] = 255  # top half white, bottom half black
    pixels, _ = read_dicom(_save(_dataset(rgb, "RGB"), tmp_path / "rgb.dcm"))
    assert pixels.shape == (4, 4)
    assert (pixels[:2] == 255).all() and (pixels[2:] == 0).all()


def test_rle_compressed_file_decodes(tmp_path, gradient):
    ds = _dataset(gradient)
    ds.compress(RLELossless)
    pixels, _ = read_dicom(_save(ds, tmp_path / "rle.dcm"))
    assert np.array_equal(pixels, gradient)


def test_unavailable_decoder_names_what_to_install(tmp_path, gradient):
    ds = _dataset(gradient)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    reason = r"unsupported transfer syntax 1\.2\.840\.10008\.1\.2\.4\.70 \(install pylibjpeg"
    with pytest.raises(DecodeFailure, match=reason):
        read_dicom(_save(ds, tmp_path / "jll.dcm"))


def test_file_without_pixel_data_fails_with_reason(tmp_path):
    path = _save(_dataset(None), tmp_path / "header-only.dcm")
    with pytest.raises(DecodeFailure, match="DICOM without pixel data"):
        read_dicom(path)
    assert dicom_patient_id(path) == "PAT-7"


def test_patient_id_from_header_and_empty_is_none(tmp_path, gradient):
    padded = _save(_dataset(gradient, patient_id=" P42 "), tmp_path / "a.dcm")
    assert dicom_patient_id(padded) == "P42"
    assert dicom_patient_id(_save(_dataset(gradient, patient_id=""), tmp_path / "b.dcm")) is None


def test_non_dicom_file_fails_with_reason(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"this is not a dicom file" * 20)
    with pytest.raises(DecodeFailure, match="not a DICOM file"):
        read_dicom(path)
    with pytest.raises(DecodeFailure, match="not a DICOM file"):
        dicom_patient_id(path)


def test_decode_image_reads_dicom_at_the_requested_size(tmp_path, gradient):
    path = _save(_dataset(gradient, "MONOCHROME1"), tmp_path / "x.dcm")
    image = decode_image(path, 32)
    assert image.shape == (32, 32) and image.dtype == np.uint8
    # Inverted gradient: the left edge (stored 0) is the brightest.
    assert image[:, 0].mean() > image[:, -1].mean()



def test_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset

    stored = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 16]
    # A steep curve, not a straight line.
    lut.LUTData = np.array([0, 4000, 60000, 65535], dtype=np.uint16).tobytes()
    ds = _dataset(stored)
    ds.VOILUTSequence = [lut]
    pixels, _ = read_dicom(_save(ds, tmp_path / "lut.dcm"))
    assert pixels.tolist() == [[0, 16, 233, 255]]
