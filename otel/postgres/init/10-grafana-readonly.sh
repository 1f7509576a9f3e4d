#!/usr/bin/env bash
# Creates the read-only role Grafana uses to read Chatter's tables.
#
# Run once by the postgres image on an empty data directory (files in
# /docker-entrypoint-initdb.d), before the chatter service has created any table. So besides
# granting SELECT on what exists, it sets default privileges: every table the application
# role ($POSTGRES_USER) creates later in schema public is readable by the Grafana role.
#
# Environment (all required):
#   POSTGRES_USER, POSTGRES_DB     the application role and database (postgres image)
#   GRAFANA_PG_USER                name of the read-only role
#   GRAFANA_PG_PASSWORD            its password
# Connection: psql's usual PGHOST/PGPORT/PGUSER variables apply (the image's init phase
# uses the local socket), so tests can run this script against another server.
set -euo pipefail

: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_DB:?POSTGRES_DB is required}"
: "${GRAFANA_PG_USER:?GRAFANA_PG_USER is required}"
: "${GRAFANA_PG_PASSWORD:?GRAFANA_PG_PASSWORD is required}"

# psql variables are quoted by psql itself (:"ident", :'literal'): no value is pasted into
# SQL text by the shell.
psql --no-psqlrc -v ON_ERROR_STOP=1 \
  --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v ro_user="$GRAFANA_PG_USER" \
  -v ro_password="$GRAFANA_PG_PASSWORD" \
  -v app_user="$POSTGRES_USER" \
  -v db_name="$POSTGRES_DB" <<'SQL'
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'ro_user') AS create_role \gset
\if :create_role
  CREATE ROLE :"ro_user" LOGIN PASSWORD :'ro_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION CONNECTION LIMIT 10;
\else
  ALTER ROLE :"ro_user" LOGIN PASSWORD :'ro_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION CONNECTION LIMIT 10;
\endif
-- Even a mistaken write fails: every session of this role is read-only.
ALTER ROLE :"ro_user" SET default_transaction_read_only = on;
ALTER ROLE :"ro_user" SET statement_timeout = '30s';

REVOKE ALL ON DATABASE :"db_name" FROM :"ro_user";
GRANT CONNECT ON DATABASE :"db_name" TO :"ro_user";
REVOKE CREATE ON SCHEMA public FROM :"ro_user";
GRANT USAGE ON SCHEMA public TO :"ro_user";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"ro_user";
ALTER DEFAULT PRIVILEGES FOR ROLE :"app_user" IN SCHEMA public
  GRANT SELECT ON TABLES TO :"ro_user";
SQL

echo "read-only role ${GRAFANA_PG_USER} ready on database ${POSTGRES_DB}"
