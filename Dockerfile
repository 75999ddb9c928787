# One image for every recsys container: the Airflow services, the Celery workers, the MLflow server and
# the GPU trainer. Built from the repository root: `docker compose build` (see docs/scaling-out.md).
#
# CPU by default. For the GPU trainer, point TORCH_INDEX_URL at a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t recsys:cuda .
# The CUDA wheels carry their own CUDA runtime, so python:3.11-slim stays a valid base; BASE_IMAGE is there
# for a site that must build on its own (e.g. an nvidia/cuda) image with Python 3.11 on it.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG RECSYS_UID=50000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECSYS_HOME=/var/lib/recsys \
    AIRFLOW_HOME=/var/lib/recsys/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/recsys/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1

WORKDIR /opt/recsys

# torch first, from the chosen index, so that `pip install -e .` finds torch==2.13.0 already satisfied
# and never swaps in the (CUDA-bundling) PyPI wheel; its own layer, so code changes do not refetch it.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY recsys ./recsys
COPY feature_store ./feature_store
COPY conf ./conf
COPY dags ./dags
COPY dbt_project ./dbt_project
COPY docker ./docker
# The project with its pinned stack, plus what the containers need on top of it, in one resolve:
# Celery + Postgres support for Airflow and the Postgres driver for MLflow's backend store.
# celery stays below 5.7: 5.7.0 dropped `celery.backends.database.retry`, which this celery provider
# imports, so its executor fails to load. These pins ran a DAG under the CeleryExecutor (outside Docker,
# see docs/scaling-out.md), and `pip install --dry-run` of this exact line adds packages to the pinned
# stack and changes none of its versions.
RUN pip install -e . \
      "apache-airflow-providers-celery==3.26.0" \
      "apache-airflow-providers-postgres==7.1.1" \
      "celery[redis]==5.6.3" \
      "kombu==5.6.2" \
      "psycopg2-binary==2.9.13" \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"

# A non-root user owns RECSYS_HOME; named volumes mounted there start as copies of these folders and so
# inherit the owner.
RUN useradd --uid "${RECSYS_UID}" --gid 0 --create-home recsys \
    && mkdir -p /var/lib/recsys/airflow /var/lib/recsys/landing /var/lib/recsys/warehouse \
                /var/lib/recsys/mlflow/artifacts \
    && chown -R recsys:0 /var/lib/recsys \
    && chmod -R g+rwX /var/lib/recsys
USER recsys

CMD ["recsys", "--help"]
