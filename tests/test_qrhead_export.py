"""`headpatch export --qrhead-data`: PEAR and QR heads in one checkpoint, read back by the retriever."""

import json

from huggingface_hub import ModelCard

from headpatch.qrhead import QRRetriever
from tests.conftest import invoke
from tests.tiny import tiny_model

EXAMPLES = [
    {"idx": "q1", "question": "What colour is the door?", "gt_docs": ["a"],
     "paragraphs": [{"idx": "a", "title": "House", "paragraph_text": "The door of the house is green."},
                    {"idx": "b", "title": "Garden", "paragraph_text": "The garden has tall trees."}]},
    {"idx": "q2", "question": "Who baked the bread?", "gt_docs": ["d"],
     "paragraphs": [{"idx": "c", "title": "Road", "paragraph_text": "The road runs north to the sea."},
                    {"idx": "d", "title": "Bakery", "paragraph_text": "Anna baked the bread at dawn."}]},
]


def test_export_ships_pear_and_qr_heads(tmp_path, smollm2):
    source = tmp_path / "tiny"
    tiny_model("llama", vocab_size=len(smollm2.tokenizer)).save_pretrained(source)
    smollm2.tokenizer.save_pretrained(source)
    data = tmp_path / "detect.json"
    data.write_text(json.dumps(EXAMPLES))
    out = tmp_path / "out"
    result = invoke("export", str(source), "-o", str(out), "--heads", "1-1,2-3", "--steps", "2", "--batch-size", "2",
                    "--n", "6", "--qrhead-data", str(data), "--qrhead-k", "3", "-q")
    assert result.exit_code == 0, result.stderr
    meta = json.loads((out / "config.json").read_text())["headpatch"]
    assert len(meta["qrhead"]["heads"]) == 3 and set(meta["qrhead"]["scores"]) == set(meta["qrhead"]["heads"])
    assert meta["qrhead"]["detection"]["examples"] == 2
    assert set(meta["pear"]["coefficients"]) == {"1-1", "2-3"}
    full = json.loads((out / "headpatch.json").read_text())
    assert len(full["qrhead"]["scores"]) == 12  # the full record keeps every head's score
    card = ModelCard.load(out / "README.md")
    assert "qrhead" in card.data.tags and "QRRetriever.from_pretrained" in card.text
    retriever = QRRetriever.from_pretrained(str(out))
    assert [f"{l}-{h}" for l, h in retriever.heads] == meta["qrhead"]["heads"]
    assert len(retriever.score("Who baked the bread?", ["Anna baked bread.", "The sea is blue."])) == 2


def test_bad_qrhead_data_fails_before_any_model_work(tmp_path):
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{**EXAMPLES[0], "gt_docs": ["zzz"]}]))
    result = invoke("export", "smollm2-135m", "-o", str(tmp_path / "out"), "--qrhead-data", str(data), "-q")
    assert result.exit_code != 0
    assert result.stderr.strip().startswith("headpatch: error:") and "zzz" in result.stderr
    assert not (tmp_path / "out").exists()
