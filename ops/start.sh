#!/bin/sh
# The container's command: bring the database to the latest migration, then serve.
#
# Hosts such as Render hand out libpq URLs (postgres://, postgresql://); the bot speaks
# asyncpg, so the scheme is rewritten here, once, and the app keeps its strict check.
set -eu

case "${DATABASE_URL:-}" in
    postgres://*) DATABASE_URL="postgresql+asyncpg://${DATABASE_URL#postgres://}" ;;
    postgresql://*) DATABASE_URL="postgresql+asyncpg://${DATABASE_URL#postgresql://}" ;;
esac
export DATABASE_URL

# One process migrates and serves: the imports are paid once.
exec trt serve --migrate
