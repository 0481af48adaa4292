"""Names the deployment artefacts use that the observability issue (14) adds, and that this branch does not
have yet: the freshness histogram and ragbus_build_info (dashboard, alerts), RAGBUS_METRICS_HOST (image,
manifests). Each is an expected failure here, strictly: the day the name exists the test fails ("XPASS
strict"), telling whoever merges the two branches to delete the name from PENDING_METRICS
(tests/deploy/promql.py) or PENDING_SETTINGS (tests/deploy/conftest.py), so from then on it is checked like
every other name. The probe paths /livez and /readyz are handled the same way in test_image.py."""

from __future__ import annotations

import pytest

from tests.deploy.conftest import PENDING_SETTINGS, setting_names
from tests.deploy.promql import PENDING_METRICS, exported


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.xfail(reason=why, strict=True))
                                    for f, why in PENDING_METRICS.items()])
def test_pending_metric_is_exported(family: str) -> None:
    assert any(name == family or name.startswith(family + "_") for name in exported()), \
        f"{family} is used by deploy/grafana and deploy/prometheus but not exported yet"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=why, strict=True))
                                  for n, why in PENDING_SETTINGS.items()])
def test_pending_setting_is_read(name: str) -> None:
    assert name in setting_names(), f"{name} is set by the Dockerfile and manifests but no setting reads it yet"
