import pytest

from cellrep_ml.errors import ScreenConfigError
from cellrep_ml.io.screen_config import ChannelRoles, ScreenConfig


def test_round_trip(tmp_path):
    cfg = ScreenConfig(dataset="hpa", channels=ChannelRoles("protein", "nucleus", ("mt", "er")),
                       crop_size=256, output_size=64)
    cfg.write(tmp_path)
    assert ScreenConfig.read(tmp_path) == cfg
    assert cfg.crop_output_size == 64
    assert cfg.channels.all == ("protein", "nucleus", "mt", "er")
    assert cfg.channels.segmentation == "nucleus"


def test_yeast_segments_on_marker():
    cfg = ScreenConfig.from_dict({"dataset": "y", "channels": {"protein": "GFP", "nucleus": None,
                                                               "markers": ["RFP"]}})
    assert cfg.channels.segmentation == "RFP"
    assert cfg.channels.all == ("GFP", "RFP")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"channels": {"protein": "a", "nucleus": "b"}}, "invalid screen description"),
        ({"dataset": "d", "channels": {"protein": "a", "nucleus": "a"}}, "two roles"),
        ({"dataset": "d", "dims": 4, "channels": {"protein": "a", "nucleus": "b"}}, "dims"),
        ({"dataset": "d", "crop_size": 2, "channels": {"protein": "a", "nucleus": "b"}}, "crop_size"),
        ({"dataset": "d", "channels": {"protein": "a", "nucleus": None}}, "no channel to segment"),
        ({"dataset": "d", "channels": {"protein": "a", "nucleus": "b", "segment_on": "c"}},
         "segment_on"),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path, data, match):
    with pytest.raises(ScreenConfigError, match=match):
        ScreenConfig.from_dict(data, source=tmp_path / "screen.yaml")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(ScreenConfigError, match=str(tmp_path)):
        ScreenConfig.read(tmp_path)


def test_bad_yaml(tmp_path):
    (tmp_path / "screen.yaml").write_text("dataset: [unclosed")
    with pytest.raises(ScreenConfigError, match="YAML"):
        ScreenConfig.read(tmp_path)
