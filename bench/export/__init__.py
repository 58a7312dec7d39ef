"""Export: a trained BNN as real bits, and the bit-level inference that checks it.

* ``graph``: the model's chain of layers -> ops over real values, bits and integers; thresholds folded;
* ``bits``: packing, popcount, XNOR-popcount linear and convolution;
* ``fileformat``: the safetensors file with its manifest, and the sizes measured from it;
* ``bitlevel``: the reference inference (integer XNOR-popcount, float only where the network has float layers);
* ``onnx_model``: the same graph as an ONNX model (sign kept), run by onnxruntime;
* ``runs``: export a recorded run and check it against the simulated evaluation; ``tracked``: the export every
  tracked run makes at its end.
"""
