"""Encode the built-in corpus with the default dense retriever in float32 and ship the result
(slm_ray/data/builtin/nq_corpus_minilm_l6_float32.*): a few minutes on two CPU cores.

    python scripts/make_prebuilt_embeddings.py
"""

from slm_ray.composition import compose_config
from slm_ray.data.corpus import builtin_nq_corpus, corpus_fingerprint
from slm_ray.retrieval.base import passage_text
from slm_ray.retrieval.dense import DenseRetriever
from slm_ray.retrieval.prebuilt import write_prebuilt


def main() -> None:
    cfg = compose_config(["retriever=dense", "retriever.dtype=float32", "retriever.device=cpu"]).retriever
    passages = builtin_nq_corpus()
    retriever = DenseRetriever(cfg, passages)
    embeddings = retriever.encode_passages([passage_text(p) for p in passages])
    write_prebuilt(embeddings, cfg.encoder, "float32", corpus_fingerprint(passages))
    print(f"wrote {embeddings.shape} embeddings")


if __name__ == "__main__":
    main()
