// fhec <version>: model.onnx
// encoding width 13 bits, 0 table lookups, 0 rounding bootstraps per sample
module {
  func.func @main(%arg0: tensor<1x4x!FHE.eint<13>>) -> (tensor<1x3x!FHE.eint<13>>) {
    %0 = arith.constant dense<[[-17, 13, 8], [23, -18, -10], [-31, -3, 22], [-30, -31, 31]]> : tensor<4x3xi14>
    %1 = "FHELinalg.matmul_eint_int"(%arg0, %0) : (tensor<1x4x!FHE.eint<13>>, tensor<4x3xi14>) -> tensor<1x3x!FHE.eint<13>>
    %2 = arith.constant dense<[4331, 2042, 410]> : tensor<3xi14>
    %3 = "FHELinalg.add_eint_int"(%1, %2) : (tensor<1x3x!FHE.eint<13>>, tensor<3xi14>) -> tensor<1x3x!FHE.eint<13>>
    return %3 : tensor<1x3x!FHE.eint<13>>
  }
}
