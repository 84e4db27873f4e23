// fhec <version>: model.onnx
// encoding width 15 bits, 0 table lookups, 0 rounding bootstraps per sample
module {
  func.func @main(%arg0: tensor<1x4x!FHE.eint<15>>) -> (tensor<1x3x!FHE.eint<15>>) {
    %0 = arith.constant dense<[[-38, 37, 22], [63, -62, -35], [-53, -7, 49], [-47, -63, 63]]> : tensor<4x3xi16>
    %1 = "FHELinalg.matmul_eint_int"(%arg0, %0) : (tensor<1x4x!FHE.eint<15>>, tensor<4x3xi16>) -> tensor<1x3x!FHE.eint<15>>
    %2 = arith.constant dense<[17526, 12559, 4445]> : tensor<3xi16>
    %3 = "FHELinalg.add_eint_int"(%1, %2) : (tensor<1x3x!FHE.eint<15>>, tensor<3xi16>) -> tensor<1x3x!FHE.eint<15>>
    return %3 : tensor<1x3x!FHE.eint<15>>
  }
}
