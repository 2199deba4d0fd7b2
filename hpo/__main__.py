from hpo.onnx_cli import main

try:
    main()
finally:
    # A Ctrl-C that a command handled (exit 130, "Interrupted: ...") but that passed
    # through ``exec`` of a string on its way (Ctrl-C while a lazy import defines a
    # dataclass, say) leaves CPython's "unhandled Ctrl-C" flag set, and ``python -m hpo``
    # would then kill itself with SIGINT on its way out (exit -2, no traceback). Each
    # ``exec`` of a string starts by clearing that flag; a Ctrl-C that really goes
    # unhandled sets it again after this, as it should.
    exec("")
