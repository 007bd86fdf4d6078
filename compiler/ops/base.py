"""`Op`: everything qfab knows about one operator, in one place.

An operator is one class here with one instance in the registry (`qfab.compiler.ops.OPS`): its IR
node type (a frozen dataclass, in the operator's own module), and what each part of the compiler
does with it -- verification, the bit-exact reference kernel, the float forward pass and the
quantized node built from a float one, the hardware stage (kind and cycles), its resource
estimate, its lowering to `qfab.hw` engines, its row of `qfab info`, its QDQ export and its
fake-quantized training forward. The compiler's passes look the operator up by the node's kind
and never dispatch on kinds themselves, so adding an operator is one new module here plus its
hardware engine.

A method an operator does not support raises `QfabError` naming the node (for example, no
hardware for it yet).
"""

from qfab.base.errors import QfabError

__all__ = ["Op"]


class Op:
    """Base of the operator definitions. Subclasses set `node_type` and override what they support.

    Attributes
    ----------
    node_type : type
        The IR node dataclass; its class name is the kind (``"Dense"``).
    type_preserving : bool
        The output keeps the input's quantized type (no requantization: MaxPool, Reshape).
    weighted : bool
        The node carries weights (`qfab.compiler.ir._MatNode`): quantizers, training and
        mixed precision treat it as a layer.
    """
    node_type = None
    type_preserving = False
    weighted = False

    @property
    def kind(self):
        return self.node_type.__name__

    def _unsupported(self, node, what):
        raise QfabError(f"node {node.name!r}: {self.kind} has no {what}")

    # ---- IR -----------------------------------------------------------------------------------
    def verify(self, graph, node, *tensors):
        """Check ``node`` against docs/semantics.md; ``tensors``: its input tensors, then its
        output. Raise `VerifyError` (through `common.fail`) naming the node."""
        raise NotImplementedError

    def reference(self, node, xs, *tensors):
        """The bit-exact output codes (int64, batched, channels-last) for input codes ``xs``."""
        raise NotImplementedError

    # ---- float graph and quantization ------------------------------------------------------------
    def float_forward(self, fnode, xs):
        """Float output of float node ``fnode`` (before its fused activation)."""
        raise NotImplementedError

    def from_float(self, fnode, tensors, fixed, m_bits):
        """The IR node of float node ``fnode``: ``tensors`` are the IR tensors by name (their
        types chosen), ``fixed`` the node's `FixedWeights` (weighted nodes)."""
        raise NotImplementedError

    # ---- info ---------------------------------------------------------------------------------
    def macs(self, graph, node):
        """Multiply-accumulates (or additions, for pools) per inference."""
        return 0

    def params(self, graph, node):
        """``(parameters, parameter bits, weight type text)`` for `qfab info`."""
        return 0, 0, "-"

    # ---- hardware -----------------------------------------------------------------------------
    def stage(self, graph, node):
        """The work of the node's hardware stage (`qfab.compiler.plan.Stage`), or None when it
        costs no cycles (a reshape only renames a stream)."""
        self._unsupported(node, "hardware stage")

    def estimate(self, graph, node, work, fold, m):
        """Estimated `Resources` of the node's hardware at ``fold`` (engine and window)."""
        self._unsupported(node, "resource estimate")

    def lower(self, lw, node, fold, work):
        """Add the node's stages and streams to the plan being built by ``lw``
        (`qfab.compiler.lowering.Lowering`); return its output's ``(endpoint, per_beat)``."""
        self._unsupported(node, "hardware engine")

    def input_per_beat(self, graph, node, fold, work):
        """Elements per beat the node's first stage takes (the accelerator input's packing when
        the node reads it): ``fold.simd`` unless the operator says otherwise."""
        return fold.simd

    def latency(self, graph, node, stage):
        """Pipeline latency of ``stage`` (a `qfab.compiler.plan.PlanStage` this operator's `lower`
        added) in cycles, as its engine documents it: from the input beat (or, for a MAC engine,
        the issue of the last MAC beat) that completes an output beat to that beat on the
        engine's output. `qfab.compiler.latency` adds the engines' schedules."""
        self._unsupported(node, "latency model")

    def output_interval(self, graph, node, stage):
        """Fewest cycles between two output beats of ``stage`` (1 unless its requantization takes
        several cycles per beat)."""
        return 1

    # ---- export and training ------------------------------------------------------------------
    def qdq(self, writer, node, x):
        """Write the node into a QDQ ONNX model (`qfab.compiler.frontends.onnx_qdq_write`):
        ``x`` is the ONNX name of its (first) input's float value; return the ONNX name of its
        float output before quantization."""
        self._unsupported(node, "QDQ form")

    def torch_forward(self, net, fnode, xs):
        """The fake-quantized training forward (`qfab.compiler.train.net.QatNet`) of float node
        ``fnode`` on torch tensors ``xs`` (channels-first), before its activation."""
        self._unsupported(fnode, "training forward")
