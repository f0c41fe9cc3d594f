# The Trace Python image: dagster webserver/daemon, trace-lite, the Query Service.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DAGSTER_HOME=/opt/dagster/home TRACE_CRYO_MODE=real
WORKDIR /opt/trace
COPY pyproject.toml README.md ./
COPY trace_core ./trace_core
COPY trace_dagster ./trace_dagster
COPY trace_lite ./trace_lite
COPY examples ./examples
COPY workspace.yaml ./
RUN pip install --no-cache-dir . \
 && mkdir -p $DAGSTER_HOME
COPY dagster_home/dagster.postgres.yaml $DAGSTER_HOME/dagster.yaml
# The AWS profile's instance (ECS run launcher): DAGSTER_HOME=/opt/dagster/aws, see deploy/README.md
COPY deploy/dagster.yaml /opt/dagster/aws/dagster.yaml
EXPOSE 3000 8090
CMD ["trace-lite", "--help"]
