# The chatter reference service (chatter-otel serve) for the compose stack.
#
#   docker build -t chatter-otel .
#   docker run --rm -p 127.0.0.1:8000:8000 chatter-otel
#
# Configuration is environment only: DATABASE_URL, CHATTER_* and the standard OTEL_* variables
# (see docker-compose.yml and .env.example).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CHATTER_HOST=0.0.0.0 \
    CHATTER_PORT=8000

WORKDIR /src
# pyproject.toml names README.md as the package readme: both are needed to build.
COPY pyproject.toml README.md ./
COPY chatter_otel ./chatter_otel
RUN pip install . \
    && rm -rf /src

# The user, and the write-back spool (CHATTER_OTEL_WRITEBACK_SPOOL in docker-compose.yml): a
# named volume mounted there starts as a copy of this directory, so chatter owns it.
RUN groupadd --system --gid 10001 chatter \
    && useradd --system --uid 10001 --gid chatter --home-dir /home/chatter --create-home \
       --shell /usr/sbin/nologin chatter \
    && install -d -o chatter -g chatter -m 0700 /var/lib/chatter/spool
USER chatter:chatter
WORKDIR /home/chatter

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CHATTER_PORT', '8000'), timeout=3)"]

CMD ["chatter-otel", "serve"]
