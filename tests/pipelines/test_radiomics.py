"""CT radiomics with the delta-radiomics method's settings: parity with a direct pyradiomics call on the real
CT and contour of sts_002, and coverage of the published signature's features."""

from __future__ import annotations

import csv

import pytest
import SimpleITK as sitk
from radiomics import featureextractor

from pipelines.radiomics import PARAMETERS, extract_features, load_ct, parameter_file_text, rtstruct_mask
from tests.conftest import SHARED_DATA, STS_002


@pytest.fixture(scope="module")
def ct_and_mask() -> tuple[sitk.Image, sitk.Image]:
    folder = STS_002 / "CT"
    ct = load_ct(sorted(folder.glob("0*.dcm")))
    return ct, rtstruct_mask(folder / "RTSTRUCT_RS.dcm", ct, ["GTV_Mass_CT"])


def test_contour_rasterised_on_the_ct_grid(ct_and_mask) -> None:  # noqa: ANN001
    ct, mask = ct_and_mask
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(mask)
    # The GTV of sts_002 is a soft-tissue mass of about 53 ml on 0.98 x 0.98 x 3.27 mm voxels.
    assert statistics.GetPhysicalSize(1) / 1000 == pytest.approx(53.4, rel=0.05)
    assert mask.GetSpacing() == ct.GetSpacing() and mask.GetOrigin() == ct.GetOrigin()


def test_features_equal_a_direct_pyradiomics_call(tmp_path, ct_and_mask) -> None:  # noqa: ANN001
    ct, mask = ct_and_mask
    ours = extract_features(ct, mask)
    parameter_file = tmp_path / "params.yaml"
    parameter_file.write_text(parameter_file_text())
    direct = featureextractor.RadiomicsFeatureExtractor(str(parameter_file)).execute(ct, mask)
    direct = {k: float(v) for k, v in direct.items() if not k.startswith("diagnostics_")}
    assert ours == direct
    assert PARAMETERS["setting"]["binWidth"] == 25 and PARAMETERS["setting"]["interpolator"] == "sitkLinear"
    wavelets = {name.split("_")[0] for name in ours if name.startswith("wavelet-")}
    assert wavelets == {f"wavelet-{c}" for c in ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")}
    with (SHARED_DATA / "delta_radiomics_published.csv").open() as handle:
        published = [row[next(iter(row))] for row in csv.DictReader(handle)]
    missing = [name for name in published if name.split("_", 1)[1] not in ours]
    assert not missing, missing
