"""The tokenizer step of the Triton ensemble that `xopt export --format triton` writes: a model for
Triton's Python backend, copied as `<name>-tokenizer/1/model.py`. It turns TEXT (one string per
row) into the model's inputs as `xopt eval` does (xopt.batching.tokenize, then pad): the model
card's input prefix ("query: " for e5), the tokenizer's special tokens, truncation to the card's
max length, right padding to the longest text of the request with the tokenizer's pad id.

It runs inside tritonserver, where xopt is not installed, so it imports nothing of xopt: numpy,
the `tokenizers` library (tokenizer.json beside this file) and Triton's
`triton_python_backend_utils`. Its settings are config.pbtxt's `parameters` (input_prefix,
max_length, pad_id); its outputs are config.pbtxt's, each filled by name and cast to its type.
"""

import json
from pathlib import Path

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:     # outside tritonserver: xopt imports this file only to copy it
    pb_utils = None

# model input -> the tokenizers.Encoding field that fills it
FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class TritonPythonModel:
    def initialize(self, args):
        from tokenizers import Tokenizer

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.prefix = params.get("input_prefix", "")
        self.pad_id = int(params["pad_id"])
        here = Path(args["model_repository"]) / str(args["model_version"])
        self.tokenizer = Tokenizer.from_file(str(here / "tokenizer.json"))
        self.tokenizer.no_padding()                      # padding is this model's, to the request's longest
        self.tokenizer.enable_truncation(int(params["max_length"]))
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]

    def encode(self, texts):
        """{output name: [len(texts), longest] array} for a list of strings."""
        encs = self.tokenizer.encode_batch([self.prefix + t for t in texts], add_special_tokens=True)
        width = max(len(e.ids) for e in encs)
        out = {}
        for name, dtype in self.outputs:
            arr = np.full((len(encs), width), self.pad_id if name == "input_ids" else 0, dtype=dtype)
            for i, e in enumerate(encs):
                arr[i, :len(e.ids)] = getattr(e, FIELDS[name])
            out[name] = arr
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
            if not texts:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError("TEXT holds no string")))
                continue
            arrays = self.encode(texts)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, arr) for name, arr in arrays.items()]))
        return responses
