//! From uploaded bytes to the model's input tensor: decode (with limits), orient, flatten alpha
//! onto white, fit to a square, resize, normalise.
