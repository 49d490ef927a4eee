# shellcheck shell=bash
#
# test/lib.sh: helpers shared by test/run, test/demo and the benchmark.
# Source it; it defines functions and a few TASKQ_* / PG_* variables and
# runs nothing by itself.
#
# PostgreSQL refuses to run as root, and CI runs us as root, so everything
# that starts a server goes through taskq_as_pg, which drops to the
# `postgres` OS user when needed.

TASKQ_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# What a fresh Debian machine needs to build and test taskq.  gcc only
# recommends libc6-dev, and prove (for TAP) lives in perl, not perl-base.
# python3-psycopg2: the logical replication client of test/t/009_logical.pl;
# python3-psycopg: the Python worker library and its tests (clients/).
TASKQ_DEPS=(postgresql-15 postgresql-server-dev-15 libpq-dev libipc-run-perl
	make gcc libc6-dev perl python3-psycopg2 python3-psycopg)

# Run a command as root: directly when we are root, through sudo otherwise.
taskq_as_root() {
	if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Install the missing packages of TASKQ_DEPS.  Silent when nothing is
# missing; never reads stdin (CI has none).
taskq_ensure_deps() {
	local pkg
	local -a missing=()
	for pkg in "${TASKQ_DEPS[@]}"; do
		# dpkg -s also succeeds for removed packages that left config files.
		[[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) == installed ]] ||
			missing+=("$pkg")
	done
	((${#missing[@]} == 0)) && return 0
	taskq_apt_install "${missing[@]}"
}

# Install these Debian packages, without reading stdin (CI has none).
taskq_apt_install() {
	echo "==> installing $*"
	taskq_as_root apt-get update -qq </dev/null
	taskq_as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

# The Node.js worker library (clients/node) needs node and npm, and its
# dependencies pinned by clients/node/package-lock.json.  Debian's nodejs
# and npm are installed when either command is missing (another Node.js
# on the PATH is used as it is); the dependencies go into
# clients/node/node_modules with `npm ci`, again only when that lockfile
# changed since, with a throwaway npm cache.  Never reads stdin.
taskq_ensure_node() {
	local dir=$TASKQ_TOP/clients/node cache
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
		taskq_apt_install nodejs npm
	fi
	if [[ -f $dir/node_modules/.package-lock.json && $dir/node_modules/.package-lock.json -nt $dir/package-lock.json ]]; then
		return 0
	fi
	echo "==> npm ci (clients/node)"
	cache=$(mktemp -d)
	(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error --cache "$cache" </dev/null)
	local rc=$?
	rm -rf "$cache"
	return $rc
}

# Set the PostgreSQL paths, all derived from pg_config.  PG_CONFIG may be
# given; by default it is PostgreSQL 15's (Debian's /usr/bin/pg_config
# follows the newest installed version, which need not be 15).
taskq_pg_env() {
	if [[ -z ${PG_CONFIG:-} ]]; then
		PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
		[[ -x $PG_CONFIG ]] || PG_CONFIG=$(command -v pg_config) || {
			echo "pg_config not found; set PG_CONFIG" >&2
			return 1
		}
	fi
	PG_BINDIR=$("$PG_CONFIG" --bindir)
	PG_INCLUDEDIR=$("$PG_CONFIG" --includedir)
	PG_LIBDIR=$("$PG_CONFIG" --libdir)
	# --pgxs is <pgxs>/src/makefiles/pgxs.mk; the test drivers live beside it.
	local pgxs
	pgxs=$(dirname "$(dirname "$(dirname "$("$PG_CONFIG" --pgxs)")")")
	PG_REGRESS=$pgxs/src/test/regress/pg_regress
	PG_ISOLATION_REGRESS=$pgxs/src/test/isolation/pg_isolation_regress
	PG_PERL_LIB=$pgxs/src/test/perl
	export PG_CONFIG PG_BINDIR PG_INCLUDEDIR PG_LIBDIR PG_REGRESS \
		PG_ISOLATION_REGRESS PG_PERL_LIB
}

# taskq_build_install LOG: build with -Werror and install, output to LOG.
# On failure print the end of LOG and return non-zero.
taskq_build_install() {
	local log=$1
	if make -C "$TASKQ_TOP" WERROR=1 PG_CONFIG="$PG_CONFIG" >"$log" 2>&1 &&
		taskq_as_root make -C "$TASKQ_TOP" install PG_CONFIG="$PG_CONFIG" >>"$log" 2>&1; then
		return 0
	fi
	echo "build failed; last lines of the build log:" >&2
	tail -n 40 "$log" >&2
	return 1
}

# taskq_as_pg CMD...: run CMD as the postgres OS user when we are root,
# directly otherwise.  runuser resets the environment, so the variables a
# caller may need (PATH, locale, PG*, TASKQ_*, the TAP ones) are passed on.
# The command runs in TASKQ_PG_CWD when set: postgres may not be able to
# enter our cwd (a clone under /root).
taskq_as_pg() {
	(
		if [[ -n ${TASKQ_PG_CWD:-} ]]; then cd "$TASKQ_PG_CWD" || exit; elif [[ $EUID -eq 0 ]]; then cd /; fi
		if [[ $EUID -ne 0 ]]; then exec "$@"; fi
		local var
		local -a pass=()
		for var in $(compgen -e); do
			case $var in
			PATH | LANG | LC_* | TZ | PG* | TASKQ_* | TESTDIR | TEMP_CONFIG | PERL5LIB | PROVE_* | CI)
				pass+=("$var=${!var}")
				;;
			esac
		done
		exec runuser -u postgres -- env "${pass[@]}" "$@"
	)
}

# taskq_workdir: print the path of a new temporary directory the server
# user can write.  The caller removes it (trap).
taskq_workdir() {
	local dir
	if [[ $EUID -eq 0 ]]; then
		# root's TMPDIR may be private; /tmp is reachable by postgres.
		dir=$(mktemp -d /tmp/taskq.XXXXXX)
		chown postgres: "$dir"
	else
		dir=$(mktemp -d "${TMPDIR:-/tmp}/taskq.XXXXXX")
	fi
	echo "$dir"
}

# taskq_pg_mkdir DIR...: create directories owned by the server user.
taskq_pg_mkdir() {
	taskq_as_pg mkdir -p "$@"
}

# taskq_free_port: print a TCP port on 127.0.0.1 that nothing listens on.
# The kernel picks it (port 0); perl is always there on Debian.
taskq_free_port() {
	perl -MIO::Socket::INET -e '
		my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1",
			LocalPort => 0, Proto => "tcp", ReuseAddr => 1) or die "no free port: $!\n";
		print $s->sockport, "\n";'
}

# taskq_build_listener DIR: compile test/listener.c to DIR/taskq_listener
# and print its path.
taskq_build_listener() {
	local dir=$1
	cc -std=c99 -Wall -Wextra -Werror -O2 -I"$PG_INCLUDEDIR" \
		-o "$dir/taskq_listener" "$TASKQ_TOP/test/listener.c" \
		-L"$PG_LIBDIR" -lpq
	chmod 755 "$dir/taskq_listener" # runnable by postgres whatever our umask
	echo "$dir/taskq_listener"
}

# taskq_poll SECONDS CMD...: run CMD until it succeeds, at most SECONDS.
# The short pause is between checks of a condition, not a guess at how long
# something takes.
taskq_poll() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 0.05
	done
}

# taskq_cluster_start DIR DBNAME [CONF_LINE...]: initdb a throwaway
# cluster in DIR/data with taskq preloaded for DBNAME, start it on a free
# port (TCP on 127.0.0.1 and a socket in DIR), and create DBNAME.
# Extra postgresql.conf lines may follow.  Sets TASKQ_PGDATA, TASKQ_PGHOST,
# TASKQ_PGPORT, TASKQ_PGLOG and TASKQ_CONNINFO.
taskq_cluster_start() {
	local dir=$1 db=$2
	shift 2
	TASKQ_PGDATA=$dir/data
	TASKQ_PGHOST=$dir
	TASKQ_PGPORT=$(taskq_free_port)
	TASKQ_PGLOG=$dir/postgresql.log
	TASKQ_CONNINFO="host=$TASKQ_PGHOST port=$TASKQ_PGPORT dbname=$db"
	export TASKQ_PGDATA TASKQ_PGHOST TASKQ_PGPORT TASKQ_PGLOG TASKQ_CONNINFO
	if ! taskq_as_pg "$PG_BINDIR/initdb" -D "$TASKQ_PGDATA" --auth=trust \
		--encoding=UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1; then
		echo "initdb failed:" >&2
		tail -n 20 "$dir/initdb.log" >&2
		return 1
	fi
	{
		echo "# added by test/lib.sh"
		echo "listen_addresses = '127.0.0.1'"
		echo "port = $TASKQ_PGPORT"
		echo "unix_socket_directories = '$TASKQ_PGHOST'"
		echo "logging_collector = off"
		echo "shared_preload_libraries = 'taskq'"
		echo "taskq.databases = '$db'"
		echo "max_worker_processes = 16"
		printf '%s\n' "$@"
	} >>"$TASKQ_PGDATA/postgresql.conf"
	if ! taskq_as_pg "$PG_BINDIR/pg_ctl" -D "$TASKQ_PGDATA" -l "$TASKQ_PGLOG" \
		-w -t 60 start >/dev/null; then
		echo "the server did not start; last lines of its log:" >&2
		tail -n 20 "$TASKQ_PGLOG" >&2
		return 1
	fi
	taskq_as_pg "$PG_BINDIR/createdb" -h "$TASKQ_PGHOST" -p "$TASKQ_PGPORT" "$db"
}

# taskq_cluster_stop: stop the cluster of taskq_cluster_start, if running.
# Fast shutdown, immediate if that hangs: it is a throwaway.
taskq_cluster_stop() {
	[[ -n ${TASKQ_PGDATA:-} && -f $TASKQ_PGDATA/postmaster.pid ]] || return 0
	taskq_as_pg "$PG_BINDIR/pg_ctl" -D "$TASKQ_PGDATA" -m fast -w -t 30 stop >/dev/null 2>&1 ||
		taskq_as_pg "$PG_BINDIR/pg_ctl" -D "$TASKQ_PGDATA" -m immediate -w stop >/dev/null 2>&1 ||
		true
}

# The commit that is taskq 0.1 as released; the upgrade test builds it.
TASKQ_RELEASE_0_1=0975759b681e60bfa80dcc89adbd0c9054192438

# taskq_prepare_upgrade DIR: for test/t/108_upgrade.pl, a copy of this
# PostgreSQL installation in DIR/pg with the released taskq 0.1 built
# from git history and installed, and this tree's build staged in
# DIR/new (lib/, extension/) for the test to install over it, as a
# package upgrade would.  Everything is left to the server user, who runs
# the test.  Prints the two paths as "PG NEW"; returns non-zero (with a
# reason on stderr) when there is no history to build 0.1 from.
taskq_prepare_upgrade() {
	local dir=$1 prefix root rel pkglib share stage
	git -C "$TASKQ_TOP" cat-file -e "$TASKQ_RELEASE_0_1^{commit}" 2>/dev/null || {
		echo "no git history with taskq 0.1 ($TASKQ_RELEASE_0_1) to build it from" >&2
		return 1
	}
	root=$(dirname "$PG_BINDIR")	# e.g. /usr/lib/postgresql/15
	prefix=${root%/lib/postgresql/*}	# /usr
	rel=${root#"$prefix"/}
	share=$("$PG_CONFIG" --sharedir)
	local inc=$dir/pg/$(dirname "${PG_INCLUDEDIR#"$prefix"/}")
	mkdir -p "$dir/pg/$rel" "$dir/pg/${share#"$prefix"/}" "$inc" "$dir/src-0.1" "$dir/new/lib" "$dir/new/extension"
	# PostgreSQL finds its libraries, share and include directories relative
	# to its binaries, so a copied tree is a second, independent installation.
	cp -a "$root/." "$dir/pg/$rel/"
	cp -a "$share/." "$dir/pg/${share#"$prefix"/}/"
	cp -a "$PG_INCLUDEDIR" "$inc/"
	# the copy starts with no taskq: this tree may be installed in the original
	rm -rf "$dir/pg/$rel/lib/taskq.so" "$dir/pg/$rel/lib/bitcode/taskq"*
	rm -f "$dir/pg/${share#"$prefix"/}/extension/taskq"*
	local pgc=$dir/pg/$rel/bin/pg_config
	git -C "$TASKQ_TOP" archive "$TASKQ_RELEASE_0_1" | tar -x -C "$dir/src-0.1"
	make -C "$dir/src-0.1" PG_CONFIG="$pgc" >"$dir/build-0.1.log" 2>&1 &&
		make -C "$dir/src-0.1" PG_CONFIG="$pgc" install >>"$dir/build-0.1.log" 2>&1 || {
		echo "building taskq 0.1 failed; see $dir/build-0.1.log" >&2
		tail -n 20 "$dir/build-0.1.log" >&2
		return 1
	}
	pkglib=$("$PG_CONFIG" --pkglibdir)
	cp "$pkglib/taskq.so" "$dir/new/lib/"
	cp "$share"/extension/taskq* "$dir/new/extension/"
	chown -R postgres: "$dir" 2>/dev/null || true
	echo "$dir/pg/$rel $dir/new"
}
