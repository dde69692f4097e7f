# cdc-service runtime: Python 3.11 + Java 17 (Spark) + the package + the pinned Spark JARs
# (jvm/pom.xml: Delta, Spark's Kafka source; S3A for s3:// lakes), fetched by Maven at build
# time, never at start.
FROM python:3.11-slim-bookworm AS jars
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless maven \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
COPY jvm ./jvm
RUN pip install --no-cache-dir . \
 && python -m cdc.runtime.jvm install --pom jvm/pom.xml --dest /opt/cdc/jars --profile spark --profile s3 --profile lineage

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PYTHONUNBUFFERED=1 \
    CDC_CONFIG_DIR=/opt/cdc/config \
    CDC_JARS_DIR=/opt/cdc/jars
WORKDIR /opt/cdc
COPY pyproject.toml README.md ./
COPY src ./src
# The snowflake extra: prod publishes the gold tables to Snowflake (config/prod.yaml).
RUN pip install --no-cache-dir '.[snowflake]'
COPY --from=jars /opt/cdc/jars /opt/cdc/jars
COPY config ./config
COPY schemas ./schemas
COPY streaming ./streaming
COPY batch ./batch
RUN useradd --uid 185 --create-home cdc
USER 185
ENTRYPOINT ["cdc"]
CMD ["run", "--env", "prod"]
