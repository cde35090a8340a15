"""CT radiomics with the delta-radiomics method's settings: parity with a direct pyradiomics call on the real
CT and contour of sts_002, and coverage of the published signature's features."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from radiomics import featureextractor

from pipelines.ct.lesions import annotation_regions, load_ct_volume
from pipelines.ct.radiomics import PARAMETERS, extract_volumes, parameter_file_text
from pipelines.imaging.geometry import to_sitk
from pipelines.imaging.settings import AnnotationSettings
from tests.conftest import SHARED_DATA, STS_002


@pytest.fixture(scope="module")
def ct_and_mask():
    folder = STS_002 / "CT"
    ct = load_ct_volume(sorted(folder.glob("0*.dcm")))
    (region,), _ = annotation_regions([folder / "RTSTRUCT_RS.dcm"], ct, AnnotationSettings())
    assert region.label == "GTV_Mass_CT"
    return ct, region.mask


def test_contour_rasterised_on_the_ct_grid(ct_and_mask) -> None:
    ct, mask = ct_and_mask
    # The GTV of sts_002 is a soft-tissue mass of about 53 ml on 0.98 x 0.98 x 3.27 mm voxels.
    assert mask.sum() * ct.geometry.voxel_volume_ml == pytest.approx(53.4, rel=0.05)
    assert 0 < float(np.median(ct.hu[mask])) < 100  # soft tissue in HU


def test_features_equal_a_direct_pyradiomics_call(tmp_path, ct_and_mask) -> None:
    ct, mask = ct_and_mask
    # Our path: worker processes reading the CT from a memory-mapped file.
    (ours, _) = extract_volumes(ct.hu, ct.geometry, {"P": mask, "M": mask}, processes=2, workdir=tmp_path)
    parameter_file = tmp_path / "params.yaml"
    parameter_file.write_text(parameter_file_text())
    image, label = to_sitk(ct.hu, ct.geometry), to_sitk(mask.astype(np.uint8), ct.geometry)
    direct = featureextractor.RadiomicsFeatureExtractor(str(parameter_file)).execute(image, label)
    direct = {k: float(v) for k, v in direct.items() if not k.startswith("diagnostics_")}
    assert dict(ours.features) == direct
    assert ours.voxel_count == int(mask.sum()) and ours.seconds > 0
    assert PARAMETERS["setting"]["binWidth"] == 25 and PARAMETERS["setting"]["interpolator"] == "sitkLinear"
    assert PARAMETERS["setting"]["resampledPixelSpacing"] == [1.0, 1.0, 1.0]
    wavelets = {name.split("_")[0] for name in direct if name.startswith("wavelet-")}
    assert wavelets == {f"wavelet-{c}" for c in ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")}
    with (SHARED_DATA / "delta_radiomics_published.csv").open() as handle:
        published = [row["feature"] for row in csv.DictReader(handle)]
    missing = [name for name in published if name.split("_", 1)[1] not in direct]
    assert len(published) == 15 and not missing, missing


def test_sitk_image_matches_the_dicom_geometry(ct_and_mask) -> None:
    ct, _ = ct_and_mask
    image = to_sitk(ct.hu, ct.geometry)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in ct.paths])
    reference = reader.Execute()
    assert np.allclose(image.GetOrigin(), reference.GetOrigin()) and np.allclose(
        image.GetSpacing(), reference.GetSpacing()
    )
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference).astype(np.float32))
