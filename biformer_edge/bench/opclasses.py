"""The one table of op classes behind ``biformer-bench --profile``: every op type the three profiled runtimes report
for our graphs -> the class its time is counted in.

Keys are what each profiler names an op: ONNX op types and onnxruntime's fused kernels (its profile's ``op_name``),
OpenVINO IR op types and the CPU plugin's executed node types (``get_profiling_info()``'s ``node_type``), and
PyTorch's ATen op names (``torch.profiler``'s event keys). ``tests/test_profile.py`` checks that every op type of
the exported default model's graphs and of each runtime's profile of it is a key here, so nothing that exists in
our graphs falls into ``other`` unnamed; an op type missing here is counted as ``other`` and the profile lists it.
"""
from __future__ import annotations

MATMUL = "matmul/conv"
ATTENTION = "attention"
LAYOUT = "layout"
GATHER = "gather"
NORM = "normalisation"
ELEMENTWISE = "elementwise"
OTHER = "other"

CLASSES = (MATMUL, ATTENTION, LAYOUT, GATHER, NORM, ELEMENTWISE, OTHER)   # the order of every table and chart

# OpenVINO's CPU plugin reports a Snippets subgraph as node type "Subgraph" whether it fused an attention pattern
# (MatMul + Softmax + MatMul: the MHA tokenization) or a chain of elementwise ops; the profiler tells them apart by
# the ops fused into it and reports the attention ones under this name.
OV_MHA_SUBGRAPH = "Subgraph:MHA"


def _classes(**groups: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for cls, names in groups.items():
        for name in names.split():
            if name in table:
                raise ValueError(f"op type {name} is in two classes")  # the table is a function of the op type
            table[name] = cls
    return table


_BY_CLASS = {
    MATMUL: """
        MatMul Gemm Conv ConvTranspose FusedMatMul FusedGemm FusedConv NhwcConv NhwcFusedConv QLinearConv
        QLinearMatMul MatMulInteger MatMulIntegerToFloat ConvInteger QGemm DynamicQuantizeMatMul
        Convolution GroupConvolution ConvolutionBackpropData GroupConvolutionBackpropData FullyConnected
        FullyConnectedQuantizedLegacy FullyConnectedQuantized FullyConnectedCompressed Deconvolution
        aten::linear aten::addmm aten::_addmm_activation aten::mm aten::bmm aten::baddbmm aten::matmul aten::einsum
        aten::conv2d aten::convolution aten::_convolution aten::mkldnn_convolution aten::_slow_conv2d_forward
        aten::thnn_conv2d aten::_nnpack_spatial_convolution aten::mkldnn_linear aten::_mkldnn_linear
        aten::conv_transpose2d aten::_conv_depthwise2d
    """,
    ATTENTION: f"""
        Attention MultiHeadAttention GroupQueryAttention ScaledDotProductAttention {OV_MHA_SUBGRAPH}
        aten::scaled_dot_product_attention aten::_scaled_dot_product_flash_attention_for_cpu
        aten::_scaled_dot_product_attention_math
    """,
    # data movement without arithmetic: transposes, the plugin's and onnxruntime's layout conversions (Reorder*:
    # blocked <-> plain formats, precision conversions folded in), views, splits, slices, concatenation, padding
    LAYOUT: """
        Transpose Reorder ReorderInput ReorderOutput Reshape Split VariadicSplit Slice StridedSlice Concat
        Concatenation Squeeze Unsqueeze Flatten Permute Pad Identity Expand Tile Broadcast DepthToSpace
        SpaceToDepth MemcpyToHost MemcpyFromHost
        aten::permute aten::contiguous aten::copy_ aten::clone aten::cat aten::stack aten::view aten::reshape
        aten::_reshape_alias aten::_unsafe_view aten::as_strided aten::as_strided_ aten::transpose aten::t
        aten::expand aten::expand_as aten::slice aten::select aten::narrow aten::split aten::split_with_sizes
        aten::chunk aten::unbind aten::squeeze aten::unsqueeze aten::flatten aten::unflatten aten::pad
        aten::constant_pad_nd aten::repeat aten::roll aten::alias aten::view_as aten::movedim aten::unfold
    """,
    # selecting by index: the router's TopK and the region gather
    GATHER: """
        Gather GatherElements GatherND TopK ScatterND ScatterElements ScatterUpdate ArgMax
        aten::index_select aten::arange aten::gather aten::topk aten::index aten::take_along_dim aten::argmax aten::sort
        aten::scatter
    """,
    # normalisation layers, and the reductions and pooling they and the runtimes' decompositions of them are made
    # of (OpenVINO runs LayerNorm as ReduceMean + RMS; the router's region means are the remaining ReduceMeans)
    NORM: """
        LayerNormalization SimplifiedLayerNormalization SkipLayerNormalization SkipSimplifiedLayerNormalization
        BatchNormalization InstanceNormalization GroupNormalization LpNormalization MVN RMS NormalizeL2
        ReduceMean ReduceSum ReduceL2 GlobalAveragePool AveragePool AvgPool Pooling
        aten::layer_norm aten::native_layer_norm aten::batch_norm aten::native_batch_norm
        aten::_batch_norm_impl_index aten::_native_batch_norm_legit_no_training aten::group_norm
        aten::native_group_norm aten::mean aten::sum aten::norm aten::linalg_vector_norm aten::adaptive_avg_pool2d
        aten::_adaptive_avg_pool2d aten::avg_pool2d
    """,
    # per-element arithmetic: activations, softmax, precision casts, quantize/dequantize, and resizing (a weighted
    # sum of neighbouring pixels per output element)
    ELEMENTWISE: """
        Add Sub Mul Div Pow Sqrt Erf Gelu FastGelu BiasGelu QuickGelu Relu Sigmoid Tanh Softmax LogSoftmax Clip
        Cast Where Equal Exp Log Neg Abs Max Min Resize Upsample QuantizeLinear DequantizeLinear
        DynamicQuantizeLinear
        Subtract Multiply Divide Power PowerStatic Eltwise SoftMax Convert FakeQuantize Interpolate Clamp Select
        Swish Subgraph
        aten::add aten::add_ aten::sub aten::mul aten::mul_ aten::div aten::div_ aten::pow aten::sqrt aten::rsqrt
        aten::erf aten::exp aten::neg aten::gelu aten::relu aten::relu_ aten::clamp aten::clamp_min
        aten::clamp_min_ aten::sigmoid aten::silu aten::softmax aten::_softmax aten::where aten::eq aten::fill_
        aten::zero_ aten::to aten::_to_copy aten::upsample_bilinear2d aten::upsample_nearest2d
        aten::_upsample_bilinear2d_aa aten::zeros aten::zeros_like
    """,
    # graph inputs, outputs, constants, shape bookkeeping; PyTorch's allocations and metadata-only calls
    OTHER: """
        Parameter Result Constant Const Input Output Shape ShapeOf ConstantOfShape Dropout
        aten::empty aten::empty_like aten::empty_strided aten::resize_ aten::detach detach aten::lift_fresh
        aten::resolve_conj aten::resolve_neg aten::_nnpack_available aten::feature_dropout aten::dropout
        aten::item aten::_local_scalar_dense
    """,
}

OP_CLASSES: dict[str, str] = _classes(**_BY_CLASS)


def op_class(op_type: str) -> str | None:
    """The class of ``op_type`` (a key of :data:`OP_CLASSES`), or None where the table does not name it."""
    return OP_CLASSES.get(op_type)
