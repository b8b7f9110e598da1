# nsgate: build, install, test.
#   make                      build launchers, the cffi module and the library tree under build/
#   make install              install under PREFIX (default /usr/local), setuid root
#   make install CAPS=1       the same with file capabilities (cap_setuid / cap_setgid) instead
#   make test                 install, then run the whole test suite (as root) and a short fuzz run
#   make fuzz                 a long fuzz run of every parser (FUZZ_SECONDS in all, default 600)
#   make demo                 install, then map a user namespace for a demo user

PREFIX     ?= /usr/local
DESTDIR    ?=
PYTHON     ?= /usr/bin/python3
CC         ?= cc
CAPS       ?= 0
LIBEXECDIR := $(PREFIX)/libexec/nsgate
LIBDIR     := $(PREFIX)/lib/nsgate
BUILD      := build
PYLIB      := $(BUILD)/lib
HELPERS    := newuidmap newgidmap getsubids lxc-user-nic
CFLAGS     ?= -O2 -g
# Static PIE: no dynamic loader runs before the launcher's own checks (LD_* variables, a
# file limit too low to load libc).
HARDEN     := -Wall -Wextra -Werror -std=c11 -D_FORTIFY_SOURCE=2 -fstack-protector-strong \
              -fPIE -static-pie -Wl,-z,relro,-z,now
TEST_VENV  := $(BUILD)/test-venv
FUZZ_SECONDS      ?= 600
FUZZ_TEST_SECONDS ?= 5

.PHONY: all install uninstall test fuzz demo bench lint clean check-paths FORCE

all: $(addprefix $(BUILD)/bin/,$(HELPERS)) $(PYLIB)/.stamp

check-paths:
	@case "$(LIBDIR)$(PYTHON)" in *[!A-Za-z0-9/._+-]*) \
	  echo "PREFIX and PYTHON may hold only [A-Za-z0-9/._+-]" >&2; exit 1;; esac
	@case "$(PYTHON)" in /*) ;; *) echo "PYTHON must be an absolute path" >&2; exit 1;; esac

# The launchers embed PYTHON and LIBDIR: rebuild them whenever either changes.
$(BUILD)/launcher.config: FORCE | check-paths
	@mkdir -p $(@D)
	@echo '$(PYTHON) $(LIBDIR)' | cmp -s - $@ || echo '$(PYTHON) $(LIBDIR)' > $@

$(BUILD)/bin/%: csrc/launcher.c $(BUILD)/launcher.config
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(HARDEN) -DNSGATE_HELPER='"$*"' -DNSGATE_PYTHON='"$(PYTHON)"' \
	  -DNSGATE_LIBDIR='"$(LIBDIR)"' -o $@ $<

# Runtime dependencies, pinned, fetched once.
$(BUILD)/deps/.stamp: requirements/runtime.txt
	rm -rf $(BUILD)/deps && mkdir -p $(BUILD)/deps
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-compile --only-binary=:all: \
	  --root-user-action=ignore --target $(BUILD)/deps -r requirements/runtime.txt
	rm -rf $(BUILD)/deps/bin
	touch $@

# The library tree: the dependencies, the nsgate package and the compiled cffi module.
$(PYLIB)/.stamp: $(BUILD)/deps/.stamp csrc/sysmodule_build.py $(shell find helpers -name '*.py')
	rm -rf $(PYLIB) && mkdir -p $(PYLIB) $(BUILD)/ffi
	cp -r $(BUILD)/deps/. $(PYLIB)/
	rm -f $(PYLIB)/.stamp
	cp -r helpers/nsgate $(PYLIB)/nsgate
	find $(PYLIB)/nsgate -name __pycache__ -prune -exec rm -rf {} +
	PYTHONPATH=$(PYLIB) $(PYTHON) csrc/sysmodule_build.py $(BUILD)/ffi
	cp $(BUILD)/ffi/_nsgate_sys*.so $(PYLIB)/
	touch $@

install: all
	install -d -m 0755 $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(LIBDIR)
	rm -rf $(DESTDIR)$(LIBDIR)/*
	cp -r $(PYLIB)/. $(DESTDIR)$(LIBDIR)/
	rm -f $(DESTDIR)$(LIBDIR)/.stamp
	$(PYTHON) -I -m compileall -q --invalidation-mode unchecked-hash -d $(LIBDIR) \
	  $(DESTDIR)$(LIBDIR) >/dev/null
	chown -R 0:0 $(DESTDIR)$(LIBDIR)
	chmod -R u+rwX,go+rX,go-w $(DESTDIR)$(LIBDIR)
	install -s -m 0755 -o 0 -g 0 $(BUILD)/bin/getsubids $(DESTDIR)$(LIBEXECDIR)/getsubids
ifeq ($(CAPS),1)
	install -s -m 0755 -o 0 -g 0 $(BUILD)/bin/newuidmap $(DESTDIR)$(LIBEXECDIR)/newuidmap
	install -s -m 0755 -o 0 -g 0 $(BUILD)/bin/newgidmap $(DESTDIR)$(LIBEXECDIR)/newgidmap
	setcap cap_setuid+ep $(DESTDIR)$(LIBEXECDIR)/newuidmap
	setcap cap_setgid+ep $(DESTDIR)$(LIBEXECDIR)/newgidmap
else
	install -s -m 4755 -o 0 -g 0 $(BUILD)/bin/newuidmap $(DESTDIR)$(LIBEXECDIR)/newuidmap
	install -s -m 4755 -o 0 -g 0 $(BUILD)/bin/newgidmap $(DESTDIR)$(LIBEXECDIR)/newgidmap
endif
	install -s -m 4755 -o 0 -g 0 $(BUILD)/bin/lxc-user-nic $(DESTDIR)$(LIBEXECDIR)/lxc-user-nic

uninstall:
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(LIBEXECDIR)

demo: install
	$(PYTHON) -I tools/demo.py $(LIBEXECDIR)

$(TEST_VENV)/.stamp: requirements/test.txt
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/test.txt
	touch $@

# The short fuzz run goes first, so that pytest's summary closes the output.
test: install $(TEST_VENV)/.stamp
	$(TEST_VENV)/bin/python fuzz/run.py --seconds $(FUZZ_TEST_SECONDS) --scratch $(BUILD)/fuzz-corpus
	NSGATE_PREFIX=$(PREFIX) $(TEST_VENV)/bin/python -m pytest -q tests

# Coverage-guided fuzzing (atheris) of every parser of untrusted input; the inputs that bring new
# coverage join fuzz/corpus/, crashes land in fuzz/crashes/ (replayed by tests/test_fuzz_regressions.py).
fuzz: $(PYLIB)/.stamp $(TEST_VENV)/.stamp
	$(TEST_VENV)/bin/python fuzz/run.py --total-seconds $(FUZZ_SECONDS) --scratch $(BUILD)/fuzz-corpus --merge

lint: $(TEST_VENV)/.stamp
	$(TEST_VENV)/bin/ruff check helpers tests bench tools fuzz
	$(TEST_VENV)/bin/mypy --strict helpers/nsgate

bench: install
	$(PYTHON) -I bench/bench.py --prefix $(PREFIX)

clean:
	rm -rf $(BUILD)
