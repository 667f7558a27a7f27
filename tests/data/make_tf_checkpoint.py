"""Write tests/data/tf_nezha_tiny/: a tiny NEZHA checkpoint in Huawei's original TensorFlow layout.

NEEDS TENSORFLOW (not installed in CI, not run by the tests). Run once, from the repo root:

    python -m venv /tmp/tfv && /tmp/tfv/bin/pip install tensorflow-cpu
    /tmp/tfv/bin/python tests/data/make_tf_checkpoint.py

It saves random variables under Huawei/BERT names with tf.compat.v1.train.Saver (the writer NEZHA's
TF pretraining used: V2 bundle = model.ckpt-N.index + model.ckpt-N.data-00000-of-00001), including
Adam slots and global_step, writes bert_config.json, and records what TensorFlow's own reader
returns (shape, dtype, sum, first values) in expected.json so tests/test_tf_checkpoint.py can check
our torch-only reader against TF without importing it.
"""

import json
import os

import numpy as np
import tensorflow as tf

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tf_nezha_tiny")
STEP = 7
CONFIG = {  # bert_config.json of Huawei's NEZHA (no max_relative_position key: the loader defaults it to 64)
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 8,
    "initializer_range": 0.02,
    "intermediate_size": 12,
    "max_position_embeddings": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "type_vocab_size": 2,
    "vocab_size": 20,
}


def variables(c):
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    shapes = {
        "bert/embeddings/word_embeddings": [v, h],
        "bert/embeddings/token_type_embeddings": [c["type_vocab_size"], h],
        "bert/embeddings/LayerNorm/gamma": [h],
        "bert/embeddings/LayerNorm/beta": [h],
    }
    for n in range(c["num_hidden_layers"]):
        p = f"bert/encoder/layer_{n}/"
        for name in ("query", "key", "value"):
            shapes[p + f"attention/self/{name}/kernel"] = [h, h]  # TF kernels are [in, out]
            shapes[p + f"attention/self/{name}/bias"] = [h]
        shapes.update(
            {
                p + "attention/output/dense/kernel": [h, h],
                p + "attention/output/dense/bias": [h],
                p + "attention/output/LayerNorm/gamma": [h],
                p + "attention/output/LayerNorm/beta": [h],
                p + "intermediate/dense/kernel": [h, i],
                p + "intermediate/dense/bias": [i],
                p + "output/dense/kernel": [i, h],
                p + "output/dense/bias": [h],
                p + "output/LayerNorm/gamma": [h],
                p + "output/LayerNorm/beta": [h],
            }
        )
    shapes.update(
        {
            "bert/pooler/dense/kernel": [h, h],
            "bert/pooler/dense/bias": [h],
            "cls/predictions/transform/dense/kernel": [h, h],
            "cls/predictions/transform/dense/bias": [h],
            "cls/predictions/transform/LayerNorm/gamma": [h],
            "cls/predictions/transform/LayerNorm/beta": [h],
            "cls/predictions/output_bias": [v],
            "cls/seq_relationship/output_weights": [2, h],
            "cls/seq_relationship/output_bias": [2],
        }
    )
    return shapes


def main():
    tf.compat.v1.disable_eager_execution()
    rng = np.random.default_rng(20240601)
    shapes = variables(CONFIG)
    graph = tf.Graph()
    with graph.as_default():
        for name, shape in shapes.items():
            tf.compat.v1.get_variable(name, initializer=rng.standard_normal(shape).astype(np.float32))
        # Optimizer slots of two variables, as AdamWeightDecayOptimizer saves them.
        for name in ("bert/embeddings/word_embeddings", "bert/encoder/layer_0/attention/self/query/kernel"):
            for slot in ("adam_m", "adam_v"):
                tf.compat.v1.get_variable(
                    f"{name}/{slot}", initializer=rng.standard_normal(shapes[name]).astype(np.float32)
                )
        tf.compat.v1.get_variable("global_step", initializer=np.int64(STEP), dtype=tf.int64)
        saver = tf.compat.v1.train.Saver()
        os.makedirs(OUT, exist_ok=True)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, os.path.join(OUT, "model.ckpt"), global_step=STEP, write_meta_graph=False)
    # The Saver writes absolute paths into the "checkpoint" state file; keep the fixture relocatable.
    state = os.path.join(OUT, "checkpoint")
    with open(state) as f:
        text = f.read().replace(OUT + os.sep, "")
    with open(state, "w") as f:
        f.write(text)
    with open(os.path.join(OUT, "bert_config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2, sort_keys=True)

    # Ground truth from TF's own checkpoint reader (independent of our parser).
    reader = tf.train.load_checkpoint(prefix)
    expected = {"tensorflow_version": tf.__version__, "prefix": os.path.basename(prefix), "variables": {}}
    for name, shape in sorted(tf.train.list_variables(prefix)):
        value = reader.get_tensor(name)
        expected["variables"][name] = {
            "shape": list(shape),
            "dtype": str(value.dtype),
            "sum": float(np.sum(value, dtype=np.float64)),
            "abs_sum": float(np.sum(np.abs(value), dtype=np.float64)),
            "first": np.asarray(value).reshape(-1)[:4].tolist(),
        }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    print("wrote", prefix, "with", len(expected["variables"]), "variables")


if __name__ == "__main__":
    main()
