# The Dukat image: the gateway (`dukat serve`) and the worker host (`dukat host`), as the Helm chart
# in helm/dukat runs them. Build: docker build -t <registry>/dukat:0.1.0 .
#
# torch is installed first, pinned as in constraints.txt. PyPI's Linux wheel is the CUDA build (its
# CUDA runtime comes as pip packages; the node gives the driver), which GPU worker hosts need. For a
# smaller CPU-only image:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t dukat:0.1.0-cpu .
FROM python:3.11-slim

# The torch requirement (keep it equal to constraints.txt's pin) and the index it comes from (empty: PyPI).
ARG TORCH_REQUIREMENT="torch==2.13.0"
ARG TORCH_INDEX_URL=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    DUKAT_MODELS_DIR=/models

WORKDIR /app

# g++ builds the CPU block kernels of 4bit/8bit (worker/model/cpu_kernels) below, once.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_REQUIREMENT"

COPY pyproject.toml constraints.txt README.md ./
COPY shared ./shared
COPY worker ./worker
COPY gateway ./gateway
COPY augment_adam ./augment_adam
# -c keeps the torch installed above (a local version like 2.13.0+cpu satisfies torch==2.13.0).
RUN pip install -c constraints.txt . && rm -rf build *.egg-info

# Non-root (uid 1000, as the chart's securityContext expects); the models volume is mounted at /models.
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/dukat dukat \
    && mkdir -p /models && chown 1000:1000 /models
USER 1000
# Built as the user that runs them, into its cache (~/.cache/dukat/kernels): no first load pays it.
RUN python -m worker.model.cpu_kernels
EXPOSE 8000 8100
ENTRYPOINT ["dukat"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
