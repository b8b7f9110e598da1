# nsgate: build, install, test.
#   make                      build launchers, the cffi module and the library tree under build/
#   make install              install under PREFIX (default /usr/local), setuid root, and the
#                             service nsgated under LIBEXECDIR (its socket: SOCKET)
#   make install CAPS=1       the same with file capabilities (cap_setuid / cap_setgid) instead
#   make install MODE=service helpers with no setuid bit and no file capabilities: they work only
#                             through nsgated (the launchers try it first in every mode)
#                             (all modes also install the service's systemd units and OpenRC script)
#   make test                 install, then run the whole test suite (as root) and a short fuzz run
#   make fuzz                 a long fuzz run of every parser (FUZZ_SECONDS in all, default 600)
#   make demo                 install, then map a user namespace for a demo user
#   make man                  the man pages (scdoc) under build/man
#   make deb / make rpm       distribution packages under build/ (packaging/README.md)

PREFIX     ?= /usr/local
DESTDIR    ?=
PYTHON     ?= /usr/bin/python3
CC         ?= cc
CAPS       ?= 0
MODE       ?= setuid
SOCKET     ?= /run/nsgate/io.socket
LIBEXECDIR ?= $(PREFIX)/libexec/nsgate
LIBDIR     ?= $(PREFIX)/lib/nsgate
MANDIR     ?= $(PREFIX)/share/man
# SYSTEM_CFFI=1: no bundled cffi; LIBDIR gets a symlink to the system's _cffi_backend (packages).
SYSTEM_CFFI ?= 0
BUILD      := build
PYLIB      := $(BUILD)/lib
HELPERS    := newuidmap newgidmap getsubids lxc-user-nic
CFLAGS     ?= -O2 -g
# Static PIE: no dynamic loader runs before the launcher's own checks (LD_* variables, a
# file limit too low to load libc).
HARDEN     := -Wall -Wextra -Werror -std=c11 -D_FORTIFY_SOURCE=2 -fstack-protector-strong \
              -fPIE -static-pie -Wl,-z,relro,-z,now
TEST_VENV  := $(BUILD)/test-venv
# Installed files are root's. An unprivileged packaging build (rpmbuild in mock, a DESTDIR
# staging) cannot chown: there the package's metadata (%attr, dh_fixperms) sets the owner.
OWNER      := $(if $(filter 0,$(shell id -u)),-o 0 -g 0,)
FUZZ_SECONDS      ?= 600
FUZZ_TEST_SECONDS ?= 5

.PHONY: all install uninstall test fuzz demo bench lint clean check-paths check-mode man deb rpm \
        pkg-tree FORCE

all: $(addprefix $(BUILD)/bin/,$(HELPERS)) $(PYLIB)/.stamp

check-paths:
	@case "$(LIBDIR)$(PYTHON)$(SOCKET)" in *[!A-Za-z0-9/._+-]*) \
	  echo "PREFIX, PYTHON and SOCKET may hold only [A-Za-z0-9/._+-]" >&2; exit 1;; esac
	@case "$(PYTHON)" in /*) ;; *) echo "PYTHON must be an absolute path" >&2; exit 1;; esac
	@case "$(SOCKET)" in /*) ;; *) echo "SOCKET must be an absolute path" >&2; exit 1;; esac

check-mode:
	@case "$(MODE)" in setuid|service) ;; *) \
	  echo "MODE is setuid (the default) or service" >&2; exit 1;; esac
	@if [ "$(MODE)" = service ] && [ "$(CAPS)" = 1 ]; then \
	  echo "MODE=service installs the helpers without privilege: CAPS=1 does not apply" >&2; \
	  exit 1; fi

# The launchers embed PYTHON, LIBDIR and SOCKET: rebuild them whenever one changes.
$(BUILD)/launcher.config: FORCE | check-paths
	@mkdir -p $(@D)
	@echo '$(PYTHON) $(LIBDIR) $(SOCKET)' | cmp -s - $@ || \
	  echo '$(PYTHON) $(LIBDIR) $(SOCKET)' > $@

LAUNCHER_SOURCES := csrc/launcher.c csrc/service_client.c

$(BUILD)/bin/%: $(LAUNCHER_SOURCES) csrc/service_client.h $(BUILD)/launcher.config
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(HARDEN) -DNSGATE_HELPER='"$*"' -DNSGATE_PYTHON='"$(PYTHON)"' \
	  -DNSGATE_LIBDIR='"$(LIBDIR)"' -DNSGATE_SOCKET='"$(SOCKET)"' -o $@ $(LAUNCHER_SOURCES)

# Runtime dependencies, pinned, fetched once.
$(BUILD)/deps/.stamp: requirements/runtime.txt
	rm -rf $(BUILD)/deps && mkdir -p $(BUILD)/deps
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-compile --only-binary=:all: \
	  --root-user-action=ignore --target $(BUILD)/deps -r requirements/runtime.txt
	rm -rf $(BUILD)/deps/bin
	touch $@

# The library tree: the dependencies, the nsgate package and the compiled cffi module.
ifeq ($(SYSTEM_CFFI),1)
DEPS_STAMP :=
else
DEPS_STAMP := $(BUILD)/deps/.stamp
endif

$(PYLIB)/.stamp: $(DEPS_STAMP) csrc/sysmodule_build.py $(shell find helpers -name '*.py')
	rm -rf $(PYLIB) && mkdir -p $(PYLIB) $(BUILD)/ffi
ifeq ($(SYSTEM_CFFI),1)
	ln -s "$$($(PYTHON) -I -c 'import _cffi_backend; print(_cffi_backend.__file__)')" $(PYLIB)/
else
	cp -r $(BUILD)/deps/. $(PYLIB)/
endif
	rm -f $(PYLIB)/.stamp
	cp -r helpers/nsgate $(PYLIB)/nsgate
	find $(PYLIB)/nsgate -name __pycache__ -prune -exec rm -rf {} +
	PYTHONPATH=$(PYLIB) $(PYTHON) csrc/sysmodule_build.py $(BUILD)/ffi
	cp $(BUILD)/ffi/_nsgate_sys*.so $(PYLIB)/
	touch $@

# Installed modes of the three helpers that need privilege (getsubids needs none).
ifeq ($(MODE),service)
PRIVILEGED_MODE := 0755
else ifeq ($(CAPS),1)
PRIVILEGED_MODE := 0755
else
PRIVILEGED_MODE := 4755
endif
SUBST := -e 's|@PYTHON@|$(PYTHON)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@LIBEXECDIR@|$(LIBEXECDIR)|' \
         -e 's|@SOCKET@|$(SOCKET)|'

install: check-mode all man
	install -d -m 0755 $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(LIBDIR)
	rm -rf $(DESTDIR)$(LIBDIR)/*
	cp -r $(PYLIB)/. $(DESTDIR)$(LIBDIR)/
	rm -f $(DESTDIR)$(LIBDIR)/.stamp
	$(PYTHON) -I -m compileall -q --invalidation-mode unchecked-hash -d $(LIBDIR) \
	  $(DESTDIR)$(LIBDIR) >/dev/null
	$(if $(OWNER),chown -R 0:0 $(DESTDIR)$(LIBDIR))
	chmod -R u+rwX,go+rX,go-w $(DESTDIR)$(LIBDIR)
	install -s -m 0755 $(OWNER) $(BUILD)/bin/getsubids $(DESTDIR)$(LIBEXECDIR)/getsubids
	for name in newuidmap newgidmap; do install -s -m $(PRIVILEGED_MODE) $(OWNER) \
	  $(BUILD)/bin/$$name $(DESTDIR)$(LIBEXECDIR)/$$name || exit 1; done
ifeq ($(MODE)$(CAPS),setuid1)
	setcap cap_setuid+ep $(DESTDIR)$(LIBEXECDIR)/newuidmap
	setcap cap_setgid+ep $(DESTDIR)$(LIBEXECDIR)/newgidmap
endif
ifeq ($(MODE),service)
	install -s -m 0755 $(OWNER) $(BUILD)/bin/lxc-user-nic $(DESTDIR)$(LIBEXECDIR)/lxc-user-nic
else
	install -s -m 4755 $(OWNER) $(BUILD)/bin/lxc-user-nic $(DESTDIR)$(LIBEXECDIR)/lxc-user-nic
endif
	sed $(SUBST) bin/nsgated.in > $(BUILD)/nsgated
	install -m 0755 $(OWNER) $(BUILD)/nsgated $(DESTDIR)$(LIBEXECDIR)/nsgated
	sed $(SUBST) bin/nsgate.in > $(BUILD)/nsgate
	install -d -m 0755 $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(OWNER) $(BUILD)/nsgate $(DESTDIR)$(PREFIX)/bin/nsgate
	for page in $(MAN_PAGES); do \
	  install -D -m 0644 $$page $(DESTDIR)$(MANDIR)/man$${page##*.}/$${page##*/} || exit 1; done

uninstall:
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(LIBEXECDIR)
	rm -f $(DESTDIR)$(PREFIX)/bin/nsgate
	for page in $(MAN_PAGES); do rm -f $(DESTDIR)$(MANDIR)/man$${page##*.}/$${page##*/}; done

# --- The service's init files (issue 10): nsgate.socket and nsgate.service for systemd, an OpenRC
# script as an example for other inits; filled in with LIBEXECDIR like bin/nsgate.in. Packages
# set SYSTEMDUNITDIR to their distribution's unit directory.
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
OPENRCDIR      ?= $(PREFIX)/share/nsgate/openrc
INIT_FILES     := $(BUILD)/init/nsgate.socket $(BUILD)/init/nsgate.service $(BUILD)/init/nsgated

.PHONY: init install-init uninstall-init
install: install-init
uninstall: uninstall-init

init: $(INIT_FILES)

$(BUILD)/init/nsgate.socket $(BUILD)/init/nsgate.service: $(BUILD)/init/%: etc/systemd/% FORCE
	@mkdir -p $(@D)
	sed -e 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' $< > $@

$(BUILD)/init/nsgated: etc/openrc/nsgated FORCE
	@mkdir -p $(@D)
	sed -e 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' $< > $@

install-init: $(INIT_FILES)
	install -d -m 0755 $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(OPENRCDIR)
	install -m 0644 $(OWNER) $(BUILD)/init/nsgate.socket $(BUILD)/init/nsgate.service \
	  $(DESTDIR)$(SYSTEMDUNITDIR)/
	install -m 0755 $(OWNER) $(BUILD)/init/nsgated $(DESTDIR)$(OPENRCDIR)/nsgated

uninstall-init:
	rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/nsgate.socket $(DESTDIR)$(SYSTEMDUNITDIR)/nsgate.service
	rm -f $(DESTDIR)$(OPENRCDIR)/nsgated
	rmdir $(DESTDIR)$(OPENRCDIR) $(DESTDIR)$(PREFIX)/share/nsgate 2>/dev/null || true
# --- end of the service's init files

# --- The PAM session hook's snippet (issue 11): etc/pam.d/nsgate with the installed nsgate's
# path, shipped for the administrator to include (nsgate(8), SESSION HOOK); never installed into
# /etc/pam.d, where it would change every login behind the administrator's back.
PAMSNIPPETDIR ?= $(PREFIX)/share/nsgate/pam.d

.PHONY: install-pam uninstall-pam
install: install-pam
uninstall: uninstall-pam

$(BUILD)/pam.d/nsgate: etc/pam.d/nsgate FORCE | check-paths
	@case "$(PREFIX)" in /*) ;; *) echo "PREFIX must be an absolute path" >&2; exit 1;; esac
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(PREFIX)|g' $< > $@

install-pam: $(BUILD)/pam.d/nsgate
	install -d -m 0755 $(DESTDIR)$(PAMSNIPPETDIR)
	install -m 0644 $(OWNER) $(BUILD)/pam.d/nsgate $(DESTDIR)$(PAMSNIPPETDIR)/nsgate

uninstall-pam:
	rm -f $(DESTDIR)$(PAMSNIPPETDIR)/nsgate
	rmdir $(DESTDIR)$(PAMSNIPPETDIR) $(DESTDIR)$(PREFIX)/share/nsgate 2>/dev/null || true
# --- end of the PAM snippet

# Man pages: scdoc sources man/<name>.<section>.scd, installed under names no other package
# uses (nsgate-newuidmap.1, nsgate-subuid.5, ..., nsgate.8).
MAN_PAGES := $(patsubst man/%.scd,$(BUILD)/man/%,$(wildcard man/*.scd))

man: $(MAN_PAGES)

$(BUILD)/man/%: man/%.scd
	@mkdir -p $(@D)
	scdoc < $< > $@.tmp && mv $@.tmp $@

# Packages are built from a copy of the source tree (tracked and untracked, not ignored files),
# in build/pkg/nsgate-VERSION/, never in this tree's build/bin, build/lib or an installed prefix.
VERSION  := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
PKGTREE  := $(BUILD)/pkg/nsgate-$(VERSION)

pkg-tree:
	rm -rf $(BUILD)/pkg && mkdir -p $(PKGTREE)
	git -c safe.directory='$(CURDIR)' ls-files -z -co --exclude-standard | xargs -0 sh -c \
	  'for f; do [ -e "$$f" ] && printf "%s\0" "$$f"; done; true' sh | \
	  tar --null -T - -cf - | tar -xf - -C $(PKGTREE)
	test -f $(PKGTREE)/Makefile

deb: pkg-tree
	test "$$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)" = "$(VERSION)"
	cp -r packaging/debian $(PKGTREE)/debian
	cd $(PKGTREE) && dpkg-buildpackage -us -uc -b
	rm -f $(BUILD)/nsgate_*.deb && mv $(BUILD)/pkg/nsgate_*.deb $(BUILD)/

# Three variants: build/nsgate-VERSION-1.ARCH.rpm (setuid), build/caps/… (--with caps) and
# build/service/… (--with service: no setuid helper, the helpers only talk to nsgated).
rpm: pkg-tree
	test "$$(sed -n 's/^Version: *//p' packaging/rpm/nsgate.spec)" = "$(VERSION)"
	tar -C $(BUILD)/pkg -czf $(BUILD)/pkg/nsgate-$(VERSION).tar.gz nsgate-$(VERSION)
	rm -rf $(BUILD)/rpm $(BUILD)/caps $(BUILD)/service $(BUILD)/nsgate-*.rpm
	mkdir -p $(BUILD)/caps $(BUILD)/service
	for with in setuid caps service; do \
	  top=$(abspath $(BUILD))/rpm/$$with; mkdir -p $$top/SOURCES || exit 1; \
	  cp $(BUILD)/pkg/nsgate-$(VERSION).tar.gz $$top/SOURCES/ || exit 1; \
	  rpmbuild -bb --nodeps --define "_topdir $$top" \
	    $$([ $$with = setuid ] || echo --with $$with) packaging/rpm/nsgate.spec || exit 1; \
	done
	cp $(BUILD)/rpm/setuid/RPMS/*/nsgate-*.rpm $(BUILD)/
	cp $(BUILD)/rpm/caps/RPMS/*/nsgate-*.rpm $(BUILD)/caps/
	cp $(BUILD)/rpm/service/RPMS/*/nsgate-*.rpm $(BUILD)/service/

demo: install
	$(PYTHON) -I tools/demo.py $(LIBEXECDIR) $(PREFIX)/bin/nsgate

$(TEST_VENV)/.stamp: requirements/test.txt
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/test.txt
	touch $@

# The short fuzz run goes first, so that pytest's summary closes the output.
test: install $(TEST_VENV)/.stamp
	$(TEST_VENV)/bin/python fuzz/run.py --seconds $(FUZZ_TEST_SECONDS) --scratch $(BUILD)/fuzz-corpus
	NSGATE_PREFIX=$(PREFIX) $(TEST_VENV)/bin/python -m pytest -q --durations=25 tests

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

# --- The sample of /etc/nsgate/networks.conf (issue 12), for the administrator to copy.
EXAMPLEDIR ?= $(PREFIX)/share/nsgate

.PHONY: install-examples uninstall-examples
install: install-examples
uninstall: uninstall-examples

install-examples:
	install -d -m 0755 $(DESTDIR)$(EXAMPLEDIR)
	install -m 0644 $(OWNER) etc/networks.conf.example $(DESTDIR)$(EXAMPLEDIR)/networks.conf.example

uninstall-examples:
	rm -f $(DESTDIR)$(EXAMPLEDIR)/networks.conf.example
	rmdir $(DESTDIR)$(EXAMPLEDIR) 2>/dev/null || true
# --- end of the sample
