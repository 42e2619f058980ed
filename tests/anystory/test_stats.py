"""`python -m anystory.stats`: the paper's numbers (Table 1, §3.2, §4.1) from the shipped configs on meta."""

import json
import sys

from anystory.stats import main as stats_main
from anystory.stats import model_stats


def test_sdxl_stats_match_the_paper():
    stats = model_stats("sdxl")
    assert stats["unet"]["parameters"] == 2_567_463_684  # 2.57 B
    assert stats["unet"]["cross_attention_layers"] == 70
    assert stats["reference_net"]["parameters_without_mask_channel"] == 2_021_626_884  # Table 1: 2.02 B
    # the mask channel adds one 3x3 input plane per conv_in output channel (320)
    assert stats["reference_net"]["parameters"] == 2_021_626_884 + 3 * 3 * 320
    assert stats["subject_tokens"] == [64, 2048]
    assert stats["clip_tokens"] == [257, 1280]
    assert stats["subject_encoder"]["clip_vision"] == 632_076_800  # ViT-H/14 + 1024-d projection
    # subject k/v: two 2048→C linears per layer, C = 640 for 10 layers and 1280 for 60
    assert stats["subject_encoder"]["subject_kv"] == 2 * 2048 * (10 * 640 + 60 * 1280)
    # reference k/v: C→C per layer except layer 1 (640), which has no reference attention
    assert stats["subject_encoder"]["reference_kv"] == 2 * (9 * 640**2 + 60 * 1280**2)


def test_stats_cli_json_and_table(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["anystory.stats", "--json", "--size", "tiny"])
    stats_main()
    stats = json.loads(capsys.readouterr().out)
    assert stats["size"] == "tiny" and stats["unet"]["cross_attention_layers"] == 11
    assert stats["subject_tokens"] == [64, 32]  # tiny: the tiny UNet's cross-attention width
    monkeypatch.setattr(sys, "argv", ["anystory.stats"])
    stats_main()
    table = capsys.readouterr().out
    assert "2,567,463,684" in table and "2,021,626,884" in table and "64 × 2048" in table
