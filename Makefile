install:
	scripts/install

uninstall:
	scripts/uninstall

test:
	scripts/test

demo:
	scripts/demo

.PHONY: install uninstall test demo
