# The image every Airflow service and the sandboxes run from: the official Airflow 3.3 image plus the runtime lock
# (requirements.txt only: tests and tooling are in requirements-dev.txt and never enter the image).
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt /opt/billing/requirements.txt
RUN pip install --no-cache-dir -r /opt/billing/requirements.txt
COPY --chown=airflow:root include /opt/airflow/include
COPY --chown=airflow:root sandbox /opt/airflow/sandbox
COPY --chown=airflow:root expectations /opt/airflow/expectations
COPY --chown=airflow:root deploy /opt/billing/deploy
# Folders the named volumes mount on start out owned by the airflow user (airflow-init chowns them again).
USER root
RUN mkdir -p /opt/airflow/var/data_docs /opt/airflow/auth /opt/airflow/sandbox-state \
    && chown -R airflow:root /opt/airflow/var /opt/airflow/auth /opt/airflow/sandbox-state
USER airflow
ENV PYTHONPATH=/opt/airflow:/opt/airflow/plugins \
    GX_ANALYTICS_ENABLED=false
