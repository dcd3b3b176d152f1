# The featurestore image: the package and its CLI; the feature repo is mounted at /repo.
FROM python:3.11-slim
# LightGBM's wheel links against the system OpenMP runtime, which the slim image lacks
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY featurestore ./featurestore
COPY online ./online
COPY offline ./offline
COPY transforms ./transforms
COPY ext ./ext
RUN pip install --no-cache-dir .
WORKDIR /repo
ENTRYPOINT ["featurestore", "--repo", "/repo"]
