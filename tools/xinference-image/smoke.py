# The build's functional check, run by install.sh in the image with no network: a tiny random
# BERT (written here, no hub) through sentence-transformers as an embedding model and as a
# cross-encoder (rerank): the code paths of Xinference's embedding and rerank models, on CPU,
# with the image's torch (no triton).
import os
import tempfile
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
from transformers import BertConfig, BertModel, BertForSequenceClassification, BertTokenizerFast
from sentence_transformers import SentenceTransformer, CrossEncoder, models
d = tempfile.mkdtemp()
vocab = os.path.join(d, "vocab.txt")
with open(vocab, "w") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hi", "there", "a", "b"]) + "\n")
tok = BertTokenizerFast(vocab_file=vocab)
cfg = dict(vocab_size=9, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
emb, rr = os.path.join(d, "emb"), os.path.join(d, "rr")
tok.save_pretrained(emb); BertModel(BertConfig(**cfg)).save_pretrained(emb)
tok.save_pretrained(rr); BertForSequenceClassification(BertConfig(num_labels=1, **cfg)).save_pretrained(rr)
st = SentenceTransformer(modules=[models.Transformer(emb), models.Pooling(32)], device="cpu")
v = st.encode(["hi there"])
ce = CrossEncoder(rr, device="cpu")
s = ce.predict([("hi", "there"), ("a", "b")])
print("smoke: embedding", tuple(v.shape), "rerank scores", len(s))
assert v.shape == (1, 32) and len(s) == 2
