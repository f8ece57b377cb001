# The image every Airflow service and the sandboxes run from: the official Airflow 3.3 image plus our lock.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt /opt/billing/requirements.txt
RUN pip install --no-cache-dir -r /opt/billing/requirements.txt
COPY --chown=airflow:root include /opt/airflow/include
COPY --chown=airflow:root sandbox /opt/airflow/sandbox
COPY --chown=airflow:root expectations /opt/airflow/expectations
ENV PYTHONPATH=/opt/airflow:/opt/airflow/plugins \
    GX_ANALYTICS_ENABLED=false
