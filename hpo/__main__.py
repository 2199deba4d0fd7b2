from hpo.onnx_cli import main

main()
