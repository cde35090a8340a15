# immunode node image: Debian + dcmtk/dicom3tools (dciodvfy gates every output) + the Python package.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk dicom3tools \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/immunode
COPY pyproject.toml README.md config.yaml ./
COPY common ./common
COPY immunode ./immunode
COPY dicom_node ./dicom_node
COPY pipelines ./pipelines
COPY models ./models
COPY research ./research
COPY storage ./storage
# CPU build of torch from the PyTorch index (no CUDA download), then the package with pinned dependencies.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install --no-cache-dir .

# Storage (files + SQLite index) lives on a volume. The configuration the image starts with is
# deploy/container.yaml: its peers.allowed is empty (nobody may store until you list your senders), so mount your
# copy of it over /etc/immunode/config.yaml (docs/operations.md, "In a container").
COPY deploy/container.yaml /etc/immunode/config.yaml
RUN useradd --system --home /var/lib/immunode immunode \
 && mkdir -p /var/lib/immunode \
 && chown -R immunode /var/lib/immunode
USER immunode
VOLUME /var/lib/immunode
EXPOSE 11112 8104
ENV IMMUNODE_CONFIG=/etc/immunode/config.yaml
# Liveness from the monitoring server (bind monitoring.host to 0.0.0.0 with authentication to scrape from outside;
# /healthz answers without it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8104/healthz', timeout=4).status != 200)"
ENTRYPOINT ["immunode"]
CMD ["serve"]
