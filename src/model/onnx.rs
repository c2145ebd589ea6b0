//! ONNX protobuf messages (the few the converter writes), as prost types.
