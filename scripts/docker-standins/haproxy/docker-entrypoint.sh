#!/bin/sh
# As docker-library/haproxy's docker-entrypoint.sh: options alone run haproxy with them, and
# `haproxy ...` gets -W (master-worker: the master supervises the worker and passes signals
# on) and -db (stay in the foreground, so the container lives as long as haproxy does).
set -e
if [ "${1#-}" != "$1" ]; then
	set -- haproxy "$@"
fi
if [ "$1" = 'haproxy' ]; then
	shift
	set -- haproxy -W -db "$@"
fi
exec "$@"
