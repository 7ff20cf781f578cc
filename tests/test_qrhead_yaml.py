"""The public QRHead YAML head-set format: published lists read, our lists written and read back."""

from __future__ import annotations

import pytest
import yaml

from headpatch.errors import HeadpatchError
from headpatch.heads import format_head
from headpatch.qrhead.yamlio import read_yaml, write_yaml

# Published in the QRHead repository (see ../shared/DESIGN.md)
LLAMA_31_8B = "14-22,13-16,14-28,14-31,16-19,14-1,16-26,17-24,14-0,13-0,16-25,13-12,13-1,13-10,17-27,20-14"
PUBLISHED = f"""# Default configuration

attn_head_set: "{LLAMA_31_8B}" # top16
model_base_class: "Llama-3.1-8B-Instruct"
model_name_or_path: "meta-llama/Llama-3.1-8B-Instruct"
"""


def test_published_file_round_trips(tmp_path):
    published = tmp_path / "Llama-3.1-8B-Instruct_qr_head_NQ.yaml"
    published.write_text(PUBLISHED)
    head_set = read_yaml(published)
    assert head_set.heads[:3] == [(14, 22), (13, 16), (14, 28)] and len(head_set.heads) == 16
    assert head_set.model_name_or_path == "meta-llama/Llama-3.1-8B-Instruct"

    ours = write_yaml(tmp_path / "ours.yaml", head_set.heads, head_set.model_name_or_path)
    raw = yaml.safe_load(ours.read_text())  # what the public loader sees
    assert raw == {"attn_head_set": LLAMA_31_8B, "model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"}
    assert read_yaml(ours) == head_set
    assert ",".join(format_head(h) for h in read_yaml(ours).heads) == LLAMA_31_8B


def test_full_head_set_and_bad_files(tmp_path):
    full = tmp_path / "full.yaml"
    full.write_text('attn_head_set: "full_heads"\nmodel_name_or_path: "m"\n')
    assert read_yaml(full).heads is None
    for text, message in [
        ("model_name_or_path: m\n", "no attn_head_set"),
        ('attn_head_set: "14-22,14-22"\n', "duplicate head ids"),
        ('attn_head_set: "14:22"\n', "malformed head id"),
        ("attn_head_set: [unclosed\n", "YAML syntax error at line 2"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(HeadpatchError, match=message):
            read_yaml(bad)
    with pytest.raises(HeadpatchError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
